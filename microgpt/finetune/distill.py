"""Knowledge distillation: a trained teacher's softened next-token distributions teach a student.

`microgpt finetune distill --teacher RUN --student PRESET|CONFIG.toml|RUN` trains the student
on the usual next-token data with the loss

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T))  +  (1 - alpha) * CE(s, y)

per position, averaged over the batch: t the teacher's logits, s the student's, y the next
token, T the temperature (Hinton et al.'s recipe). Why T^2: the KL's gradient with respect to
s is (q_T - p_T) / T, and for large T, q_T - p_T ~ (s - t) / (T V), so the soft term's
gradient shrinks like 1 / T^2; multiplying by T^2 keeps its weight against the CE term the
same whatever T is chosen. T > 1 spreads the teacher's mass over the runner-up tokens (which
tokens are *almost* right is what a one-hot target cannot tell). The KL is one fused op
(ops_fused.kl_div), a C kernel on the CPU (csrc/crossentropy.c: per row, the two logsumexps of
s / T and t / T in one pass for the maxima and one for the sums) and a CUDA one on the GPU: the
teacher's logits go to it as they come from the teacher's forward, and its backward rebuilds
both softmaxes from the two row logsumexps, so nothing of size tokens x V is kept between the
passes but the two logit arrays themselves.

Teacher logits are computed on the fly, under no_grad and in eval mode, for every micro-batch.
The alternative, caching the teacher's top-k logits once, was rejected: it stores
tokens x k (id, logit) pairs (the built-in corpus's 7.4M tokens at k = 32 is 1.4 GB), ties the
cache to one data order and window length, and drops the tail mass, which biases the KL
(renormalized over k ids it is no longer the KL to the teacher). On the fly it is exact and
costs one teacher forward per step (no backward, no activations kept), which for a teacher a
few times the student's size is about what the student's own forward and backward cost.

The student can be any shape and family (a preset or TOML config, with the usual --FIELD
flags, trained from scratch; or a run or Hugging Face directory to continue): only the
vocabulary must be the teacher's, since the KL compares the two distributions id by id. A
student built from a preset gets the teacher's tokenizer; a student loaded from a directory
must already have it, and a different one is a VocabularyMismatch naming both, raised before
any file is written. Padded vocab rows (a model with more rows than its tokenizer has ids)
are cut off: both distributions are over the tokenizer's ids.

alpha = 0 is the student trained alone (the teacher is never run): the baseline of
benchmarks/results/compress.md, the same data order, initialization and steps.
"""
import dataclasses
import os

from ..errors import ConfigError
from ..train import checkpoint as ckpt
from ..train.trainer import Trainer, _check_fresh_run_dir

TEACHER_TOKENIZER_FILE = "teacher_tokenizer.bpe"


class VocabularyMismatch(ConfigError):
    """Teacher and student tokenize differently: a KL between their outputs means nothing."""


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    teacher: str
    alpha: float = 0.5          # weight of the soft (KL) term; 1 - alpha on cross-entropy
    temperature: float = 2.0

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ConfigError(f"--distill-temperature must be > 0, got {self.temperature}")


def describe_vocabulary(tokenizer):
    return (f"{tokenizer.vocab_size} ids ({tokenizer.n_ordinary} ordinary, specials "
            f"{sorted(tokenizer.special_tokens)})")


def check_same_tokenizer(teacher_tokenizer, student_tokenizer, teacher_name, student_name):
    """VocabularyMismatch unless both tokenizers are the same (merges, specials, pattern)."""
    from ..tokenizer.fileformat import dumps
    if dumps(teacher_tokenizer) == dumps(student_tokenizer):
        return
    raise VocabularyMismatch(
        f"distillation needs one vocabulary: teacher {teacher_name} has "
        f"{describe_vocabulary(teacher_tokenizer)}, student {student_name} has "
        f"{describe_vocabulary(student_tokenizer)}, and they tokenize differently; give a "
        f"student preset or config (it then gets the teacher's tokenizer) or a student trained "
        f"with the teacher's tokenizer.bpe")


class DistillTrainer(Trainer):
    """The Trainer with the distillation loss; the teacher is frozen and never saved."""

    def __init__(self, config, options, teacher, teacher_tokenizer, log=print):
        super().__init__(config, log)
        self.options, self.teacher, self.teacher_tokenizer = options, teacher, teacher_tokenizer
        self.teacher.eval()

    def _init_model(self, resumed):
        # A student loaded from a directory brings its own tokenizer: check it before setup
        # writes anything (data shards, the run directory).
        model, tokenizer = super()._init_model(resumed)
        check_same_tokenizer(self.teacher_tokenizer, tokenizer, self.options.teacher, self.config.init_from)
        return model, tokenizer

    def setup(self, resumed=None):
        super().setup(resumed)
        check_same_tokenizer(self.teacher_tokenizer, self.tokenizer, self.options.teacher, "(the data's)")
        return self

    def batch_loss(self, batch):
        from ..ops_fused import kl_div
        from ..tensor import no_grad
        x, y = batch
        logits, ce = self.model(x, y)
        alpha, temperature = self.options.alpha, self.options.temperature
        if alpha == 0.0:
            return ce
        with no_grad():
            teacher_logits, _ = self.teacher(x)
        vocab = self.tokenizer.vocab_size
        if logits.shape[-1] != vocab:
            logits = logits[..., :vocab]
        if teacher_logits.shape[-1] != vocab:
            teacher_logits = teacher_logits[..., :vocab]
        soft = kl_div(logits, teacher_logits, temperature)
        return soft * (alpha * temperature * temperature) + ce * (1.0 - alpha)

    def extra_trainer_state(self):
        return {"distill": dataclasses.asdict(self.options)}


def load_teacher(path, device="cpu"):
    """(model, tokenizer) of the teacher: a run, checkpoint or Hugging Face directory."""
    if not os.path.isdir(path):
        raise ConfigError(f"--teacher {path}: not a directory; give a training run, a checkpoint "
                          f"or a Hugging Face model directory")
    model, tokenizer, _ = ckpt.load_model(path, device)
    return model, tokenizer


def distill(config, options, log=print, stop_at_step=None):
    """Train config's student against options.teacher; returns the trainer's summary.

    config: the student's TrainConfig. Without init_from, its tokenizer is set to the
    teacher's (saved into the run directory as TEACHER_TOKENIZER_FILE)."""
    _check_fresh_run_dir(config.out_dir)
    teacher, teacher_tokenizer = load_teacher(options.teacher, config.device)
    # A student from a directory has its tokenizer checked in DistillTrainer._init_model.
    if not config.init_from and config.tokenizer:
        from ..train.data import load_tokenizer
        check_same_tokenizer(teacher_tokenizer, load_tokenizer(config.tokenizer), options.teacher,
                             f"(--tokenizer {config.tokenizer})")
    elif not config.init_from:
        os.makedirs(config.out_dir, exist_ok=True)
        path = os.path.join(config.out_dir, TEACHER_TOKENIZER_FILE)
        teacher_tokenizer.save(path)
        config = dataclasses.replace(config, tokenizer=path)
    trainer = DistillTrainer(config, options, teacher, teacher_tokenizer, log).setup()
    log(f"distillation: teacher {options.teacher} ({teacher.num_parameters() / 1e6:.2f}M parameters), "
        f"alpha {options.alpha}, temperature {options.temperature}")
    if os.path.exists(trainer.metrics_path):
        os.remove(trainer.metrics_path)
    summary = trainer.run(stop_at_step=stop_at_step)
    return summary


def student_config(student, preset, toml_path, overrides):
    """The student's TrainConfig from --student: a preset name, a TOML file, or a directory."""
    from ..train.config import PRESETS, make_config
    if student in PRESETS:
        if preset not in (None, student):
            raise ConfigError(f"--student {student} is a preset; leave out --preset {preset}")
        return make_config(student, toml_path, overrides)
    if student.endswith(".toml"):
        if not os.path.isfile(student):
            raise ConfigError(f"--student {student}: no such TOML file")
        if toml_path:
            raise ConfigError(f"--student {student} is a config file; leave out --config {toml_path}")
        return make_config(preset, student, overrides)
    if os.path.isdir(student):
        return make_config(preset, toml_path, {**overrides, "init_from": student})
    raise ConfigError(f"--student {student}: give a preset ({', '.join(sorted(PRESETS))}), a "
                      f"CONFIG.toml, or a run / checkpoint / Hugging Face directory")


def run_distill(args, overrides):
    """`microgpt finetune distill`: overrides are the TrainConfig flags given."""
    config = student_config(args.student, args.preset, args.config, overrides)
    options = DistillOptions(teacher=args.teacher, alpha=args.alpha, temperature=args.distill_temperature)
    summary = distill(config, options)
    print(f"\n{summary['steps']} steps; train loss {summary['train_loss']:.4f}, "
          f"val loss {summary['val_loss']:.4f}\ncheckpoint: {summary['checkpoint']}")
    return 0
