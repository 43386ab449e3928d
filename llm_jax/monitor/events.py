"""Read TensorBoard event files back: scalars, text and hparams, as TensorBoard itself would show them.

Used by reports that compare runs and by tests. A resumed run's writer marks a restart (a SessionLog.START event
at the step it resumed from); like TensorBoard, reading drops what the earlier writer logged from that step on.
"""

import dataclasses
import pathlib
import struct

from tensorboardX.proto import event_pb2
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData


def iter_events(logdir: str | pathlib.Path):
    """Every event of every `events.out.tfevents.*` file directly in `logdir`, in the order they were written."""
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[i: i + 8])
            if i + 12 + n + 4 > len(data):  # a record cut short by a crash: the rest is unreadable
                break
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12: i + 12 + n])
            yield event
            i += 12 + n + 4


@dataclasses.dataclass
class RunEvents:
    scalars: dict[str, dict[int, float]]  # tag -> step -> value (the last one written for that step)
    texts: dict[str, dict[int, str]]
    hparams: dict[str, bool | float | str]  # the session's hparams
    metric_tags: list[str]  # the metrics the HParams tab shows for the run
    finished: bool  # the session's end was written


def _hparam_value(value) -> bool | float | str:
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


def read_run(logdir: str | pathlib.Path) -> RunEvents:
    run = RunEvents({}, {}, {}, [], False)
    for event in iter_events(logdir):
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            for series in (*run.scalars.values(), *run.texts.values()):
                for step in [s for s in series if s >= event.step]:
                    del series[step]
            continue
        for value in event.summary.value:
            plugin = value.metadata.plugin_data.plugin_name
            if plugin == "hparams":
                data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    run.hparams = {k: _hparam_value(v) for k, v in data.session_start_info.hparams.items()}
                elif data.HasField("experiment"):
                    run.metric_tags = [m.name.tag for m in data.experiment.metric_infos]
                elif data.HasField("session_end_info"):
                    run.finished = True
            elif plugin == "text":
                run.texts.setdefault(value.tag, {})[event.step] = value.tensor.string_val[0].decode("utf-8")
            elif value.HasField("simple_value"):
                run.scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return run
