"""A user's own ``--user-dir`` with a task of its own, and its pruned twin (the last two lines).

    fairseq-train DATA --user-dir examples/pruning/my_task --task my_task_pruned --prune-ratio 0.5 ...

The task here is a stand-in for yours: fairseq's translation task with one option of its own.  Importing
``fairseq_bso`` (installed, or on ``PYTHONPATH``) registers the plugin's tasks and criterions too.
"""

from dataclasses import dataclass, field

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask


@dataclass
class MyTaskConfig(TranslationConfig):
    my_option: int = field(default=0, metadata={"help": "an option of your task (unused here)"})


@register_task("my_task", dataclass=MyTaskConfig)
class MyTask(TranslationTask):
    pass


from fairseq_bso.prune.tasks import register_pruned_task  # noqa: E402
register_pruned_task("my_task_pruned", "my_task")
