"""The model's options beyond the CodeGen block (issue 7's levers): grid-cell embeddings, and
normalised queries and keys with a squared-ReLU MLP. Each acts, keeps cached decoding equal to the
full pass, and counts its parameters."""

import numpy as np
import torch

import karel
from model.config import ModelConfig, TrainConfig
from model.optim import make_optimizer
from model.transformer import KVCache, Transformer

from test_model_core import CFG


def test_cell_coordinates_follow_the_grids():
    """Every interior cell gets its own row, column and side; headers and program tokens none."""
    from model.cells import cell_coordinates, header_kinds

    vocab = karel.Vocab()
    worlds = karel.random_worlds(np.random.default_rng(0), 5)
    ids, _ = karel.encode_samples(worlds, worlds, np.zeros((1, 3), np.int8), vocab)
    ids = torch.from_numpy(ids.astype(np.int64))
    row, col, side, valid = cell_coordinates(ids, header_kinds(48))
    assert int(valid.sum()) == 10 * 36
    for g in range(10):  # grid g: header at 37 g, cells after it
        cells = slice(37 * g + 1, 37 * g + 37)
        assert not valid[0, 37 * g] and valid[0, cells].all()
        assert row[0, cells].tolist() == [i // 6 for i in range(36)]
        assert col[0, cells].tolist() == [i % 6 for i in range(36)]
        assert (side[0, cells] == g % 2).all()  # Input{k} then Output{k}
    assert not valid[0, 370:].any()  # Code: def run() { move ... } <eos>
    # A chunk without its header (a cached decoding step, a block cut mid-grid) gets none.
    assert not cell_coordinates(ids[:, 5:30], header_kinds(48))[3].any()


def assert_cached_decoding_matches(model, x, prefix: int) -> None:
    """A prefill of ``x[:, :prefix]`` into a KV cache, then one token at a time: the logits and the
    last hidden state of each step equal the full pass's at that position."""
    full, hidden = model(x, return_hidden=True)
    cache = KVCache.empty(model.cfg, x.shape[0], x.shape[1], "cpu", torch.float32)
    model(x[:, :prefix], cache=cache)
    for t in range(prefix, x.shape[1]):
        o, h = model(x[:, t : t + 1], cache=cache, return_hidden=True)
        torch.testing.assert_close(o[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h[-1][:, 0], hidden[-1][:, t], atol=1e-5, rtol=1e-5)


def test_cell_embeddings_change_only_cells_and_decode_with_cache():
    cfg = ModelConfig(**{**CFG.__dict__, "context": 512, "cell_embeddings": True})
    assert cfg.n_params() == sum(p.numel() for p in Transformer(cfg).parameters())
    torch.manual_seed(3)
    model = Transformer(cfg).eval()
    vocab = karel.Vocab()
    worlds = karel.random_worlds(np.random.default_rng(1), 5)
    ids, _ = karel.encode_samples(worlds, worlds, np.array([[0, 1, 2, -1]], np.int8), vocab)
    x = torch.from_numpy(ids[:, :376].astype(np.int64))
    with torch.no_grad():
        emb = model.cells(x)
        assert emb[0, 1:37].abs().sum(-1).gt(0).all() and not emb[0, 370:].any()
        assert_cached_decoding_matches(model, x, 374)
    decayed = {id(p) for p in model.param_groups(0.1)[0]["params"]}
    assert not any(id(p) in decayed for p in model.cells.parameters())


def test_the_block_options_act_and_decode_with_cache():
    """qk_norm: each head's queries and keys are RMS-normalised, so scaling them leaves attention
    as it was; relu2: the MLP squares its ReLU. Both keep cached decoding equal to the full pass,
    and the parameter count right (the gains go to AdamW, not Muon)."""
    cfg = ModelConfig(**{**CFG.__dict__, "context": 512, "qk_norm": True, "mlp_act": "relu2"})
    assert cfg.n_params() == sum(p.numel() for p in Transformer(cfg).parameters()) == CFG.n_params() + 2 * 2 * 8
    torch.manual_seed(4)
    model = Transformer(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        assert_cached_decoding_matches(model, x, 37)
        block = model.blocks[0]
        h0 = torch.randn(2, 40, cfg.d_model)
        cos, sin = model.rope_cos[:40], model.rope_sin[:40]
        attn = block.attn(h0, cos, sin)
        block.attn.qkv.weight[: 2 * cfg.d_model].mul_(7.0)  # queries and keys 7x: normalised away
        torch.testing.assert_close(block.attn(h0, cos, sin), attn, atol=1e-4, rtol=1e-4)
        u = block.fc_in(block.ln(h0))
        want = h0 + block.attn(block.ln(h0), cos, sin) + block.fc_out(torch.relu(u) ** 2)
        torch.testing.assert_close(block(h0, cos, sin), want)
        plain = Transformer(CFG)
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if "_norm" not in k})
        assert not torch.allclose(plain(x)[0], model(x)[0], atol=1e-3)  # the options change the function
    opt = make_optimizer(model, TrainConfig(optimizer="muon", device="cpu", autocast="off"))
    muon = {id(p) for g in opt.parts[1].param_groups for p in g["params"]}
    gains = [p for n, p in model.named_parameters() if "_norm" in n]
    assert len(gains) == 2 * cfg.n_layer and not any(id(p) in muon for p in gains)
