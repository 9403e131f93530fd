"""The language model: transformer, training with checkpoints, constrained decoding, metrics.

Imports torch, numpy and ``karel`` only (never the orchestration stack).
"""

from .checkpoint import list_checkpoints, load_checkpoint, load_model
from .config import (
    ModelConfig, TrainConfig, checkpoint_steps, config_from_dict, preset, replace_fields,
)
from .decode import MAX_ACTIONS, Generation, generate, generate_modes
from .metrics import correct_pairs, correct_states, evaluate_checkpoint, generation_metrics, perplexity
from .phases import PhaseRule, Phases, label_phases
from .train import train
from .transformer import KVCache, Transformer

__all__ = [
    "MAX_ACTIONS", "Generation", "KVCache", "ModelConfig", "PhaseRule", "Phases", "TrainConfig",
    "Transformer", "checkpoint_steps", "config_from_dict", "correct_pairs", "correct_states",
    "evaluate_checkpoint",
    "generate", "generate_modes", "generation_metrics", "label_phases", "list_checkpoints", "load_checkpoint",
    "load_model", "perplexity", "preset", "replace_fields", "train",
]
