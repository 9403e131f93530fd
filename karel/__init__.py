"""Karel: the world, its semantics, random data and the text format (numpy only)."""

from .batch import PAD, Trace, execute_batch, output_worlds
from .dataset import DataConfig, Samples, generate_dataset, load_split, read_manifest
from .interpreter import execute, step
from .programs import TOKEN_WEIGHTS, program_text, random_programs
from .semantics import ACTION_ID, ACTIONS, SEMANTICS, parse_program, semantics_table
from .text import Vocab, encode_samples, format_sample, grid_ids, parse_sample, prompt_length
from .world import DIRECTIONS, World, WorldBatch, random_world, random_worlds

__all__ = [
    "ACTIONS", "ACTION_ID", "DIRECTIONS", "PAD", "SEMANTICS", "TOKEN_WEIGHTS",
    "DataConfig", "Samples", "Trace", "Vocab", "World", "WorldBatch",
    "encode_samples", "execute", "execute_batch", "format_sample", "generate_dataset", "grid_ids",
    "load_split", "output_worlds", "parse_program", "parse_sample", "program_text",
    "prompt_length", "random_programs", "random_world", "random_worlds", "read_manifest",
    "semantics_table", "step",
]
