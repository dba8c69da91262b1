"""The balancing engine: ``DistillationTrainer`` runs any ``DistillationTask`` (``task.py``) with the frozen teacher
(``teacher.py``), the accumulation window's exact means, the placements, the trade-off log, checkpoints and
publishing; ``DTOKDConfig`` holds its options."""

from hf_dtokd.trainer.dtokd_config import DTOKDConfig
from hf_dtokd.trainer.engine import DistillationTrainer
from hf_dtokd.trainer.task import DistillationTask
from hf_dtokd.trainer.teacher import DistillationTeacher, load_teacher

__all__ = ["DTOKDConfig", "DistillationTask", "DistillationTeacher", "DistillationTrainer", "load_teacher"]
