"""GPT-2 checkpoints in Hugging Face's layout: export a trained model so that
`transformers.GPT2LMHeadModel.from_pretrained(DIR)` loads it, and start a run from such a directory.

jscale's Transformer stores its parameters in GPT-2's own tree (wte, wpe, h_{i}/{ln_1, attn/{c_attn, c_proj}, ln_2,
mlp/{c_fc, c_proj}}, ln_f) with kernels (in, out) like GPT-2's Conv1D, so the mapping is one name per tensor:
  h_{i}/attn/c_attn/kernel -> transformer.h.{i}.attn.c_attn.weight    LayerNorm scale -> weight
  wte/embedding -> transformer.wte.weight                              lm_head/kernel (untied) -> lm_head.weight (V, D)
What GPT-2 cannot express is refused: LSTM and Transformer-XL, grouped-query attention, d_attn != d_model, and a
Universal Transformer with a step embedding (one without is exported with its passes unrolled into blocks).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jscale.config import ConfigError, ModelConfig
from jscale.errors import ResourceError
from jscale.models.transformer import LAYER_NORM_EPS

GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's tanh approximation, which jscale's MLP uses


def _check_expressible(m: ModelConfig) -> None:
    why = None
    if m.kind not in ("transformer", "universal"):
        why = f"a {m.kind} model is not a GPT-2"
    elif m.kind == "universal" and m.reuse > 1 and m.step_embedding:
        why = "a Universal Transformer's step embedding has no GPT-2 counterpart (train with step_embedding = false)"
    elif m.n_kv_heads_ != m.n_heads:
        why = f"grouped-query attention (n_kv_heads = {m.n_kv_heads_} < n_heads = {m.n_heads}) is not GPT-2's"
    elif m.d_attn_ != m.d_model:
        why = f"GPT-2's attention width is d_model; this model has d_attn = {m.d_attn_}, d_model = {m.d_model}"
    if why:
        raise ConfigError(f"--to hf: {why}; export is for GPT-2-layout models")


def hf_config(m: ModelConfig, eos: int | None = None) -> dict[str, Any]:
    """GPT2Config for these weights. eos: the tokenizer's own end-of-text id (GPT-2's 50256), used as GPT-2 uses it
    (bos = eos); without one, no special token is named (a byte or a BPE piece is an ordinary token: generate()
    would stop on it and pipelines pad with it)."""
    _check_expressible(m)
    blocks = m.n_layer * (m.reuse if m.kind == "universal" else 1)
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
            "n_positions": m.n_ctx, "n_ctx": m.n_ctx, "n_embd": m.d_model, "n_layer": blocks, "n_head": m.n_heads,
            "n_inner": m.d_ff_, "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": m.tie_embeddings,
            "scale_attn_weights": True, "torch_dtype": "float32",
            **({} if eos is None else {"bos_token_id": eos, "eos_token_id": eos})}


def _tokenizer_files(model) -> tuple[str | None, tuple[str, int] | None]:
    """The run's tokenizer as tokenizer.json text (the copy its run directory kept, else rebuilt from the config),
    and its end-of-text token."""
    from jscale.data import make_tokenizer
    from jscale.data.tokenizers import FileTokenizer, end_of_text, hf_tokenizer_json

    kept = Path(str(model.source)) / "tokenizer.json"
    if kept.is_file():  # (a BPE is not trained again: the copy is the tokenizer)
        return kept.read_text(), end_of_text(FileTokenizer(str(kept)))
    tok = make_tokenizer(model.cfg.data)
    return hf_tokenizer_json(tok), end_of_text(tok)


def to_state_dict(m: ModelConfig, params) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's state dict (float32 numpy) from jscale parameters."""
    _check_expressible(m)
    f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
    out = {"transformer.wte.weight": f32(params["wte"]["embedding"]),
           "transformer.wpe.weight": f32(params["wpe"]["embedding"]),
           "transformer.ln_f.weight": f32(params["ln_f"]["scale"]),
           "transformer.ln_f.bias": f32(params["ln_f"]["bias"])}
    reuse = m.reuse if m.kind == "universal" else 1
    for r in range(reuse):  # a Universal Transformer's passes unrolled: the same weights in each pass's blocks
        for i in range(m.n_layer):
            p, prefix = params[f"h_{i}"], f"transformer.h.{r * m.n_layer + i}."
            for ln in ("ln_1", "ln_2"):
                out[prefix + f"{ln}.weight"], out[prefix + f"{ln}.bias"] = f32(p[ln]["scale"]), f32(p[ln]["bias"])
            for group, dense in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
                out[prefix + f"{group}.{dense}.weight"] = f32(p[group][dense]["kernel"])
                out[prefix + f"{group}.{dense}.bias"] = f32(p[group][dense]["bias"])
    if not m.tie_embeddings:
        # nn.Linear stores (out, in). Contiguous after the transpose: safetensors writes an array's raw buffer, and a
        # transposed view's buffer is the untransposed matrix (the export loaded without a warning, scrambled).
        out["lm_head.weight"] = np.ascontiguousarray(f32(params["lm_head"]["kernel"]).T)
    return out


def export(model, out_dir: str | Path) -> Path:
    """model.safetensors + config.json (+ tokenizer.json where the run's tokenizer is a file) in out_dir, written
    to a temporary directory and renamed into place; an existing out_dir is refused."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"--to hf: {out} exists; choose a new directory")
    tokenizer_json, eot = _tokenizer_files(model)
    cfg_json = hf_config(model.cfg.model, None if eot is None else eot[1])
    tensors = to_state_dict(model.cfg.model, model.params)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg_json, indent=2))
        special = {} if eot is None else {"bos_token": eot[0], "eos_token": eot[0]}
        (tmp / "generation_config.json").write_text(json.dumps(
            {k: v for k, v in cfg_json.items() if k in ("bos_token_id", "eos_token_id")}, indent=2))
        if tokenizer_json is not None:  # AutoTokenizer loads it as it is: no <|endoftext|> invented at id V
            (tmp / "tokenizer.json").write_text(tokenizer_json)
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.cfg.model.n_ctx,
                 "clean_up_tokenization_spaces": False, **special}, indent=2))
        (tmp / "jscale.json").write_text(json.dumps({"source": model.source, "step": model.step,
                                                      "config": model.cfg.to_dict()}, indent=2))
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.iterdir():  # world-readable like any file written here (safetensors writes 0600)
            p.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":  # a full or read-only disk: one line
            reason = getattr(e, "strerror", None) or " ".join(str(e).split())
            raise ResourceError(f"{out}: cannot write the export ({reason.lower()[:120]}); free space or choose "
                                f"another directory and re-run") from None
        raise
    return out


# ---------------------------------------------------------------------------------------------------------------
# Import: a GPT-2 directory as a model config and initial parameters.


# GPT2Config fields whose other values change the logits, with the value jscale computes. (reorder_and_upcast_attn
# only changes the order of float32 operations; the dropout rates do not act at inference; n_inner, the activation,
# layer_norm_epsilon and tie_word_embeddings are read or checked above.)
UNSUPPORTED_FIELDS = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                      "add_cross_attention": False}


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"model.init_from: {directory} has no config.json (a GPT-2 directory holds config.json "
                          f"and model.safetensors)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"model.init_from: {path}: not valid JSON ({e})") from None
    if hf.get("model_type") != "gpt2":
        raise ConfigError(f"model.init_from: {path}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    if hf.get("activation_function", "gelu_new") not in GELU_NAMES:
        raise ConfigError(f"model.init_from: {path}: activation {hf['activation_function']!r} is not GPT-2's tanh GELU")
    if abs(hf.get("layer_norm_epsilon", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12:
        raise ConfigError(f"model.init_from: {path}: layer_norm_epsilon {hf['layer_norm_epsilon']} is not "
                          f"{LAYER_NORM_EPS}")
    # The fields of GPT2Config that change what the model computes, where jscale's Transformer computes otherwise:
    # refused in one line rather than imported with other logits.
    for key, ours in UNSUPPORTED_FIELDS.items():
        if hf.get(key, ours) != ours:
            raise ConfigError(f"model.init_from: {path}: {key} = {json.dumps(hf[key])} changes the computation and "
                              f"jscale's GPT-2 has {json.dumps(ours)}; this checkpoint cannot be imported exactly")
    return hf


def model_section(directory: str | Path) -> dict[str, Any]:
    """The [model] keys of a jscale config that reproduce a GPT-2 directory's architecture."""
    directory = Path(directory).expanduser()
    hf = _read_config(directory)
    n_embd = hf["n_embd"]
    return {"kind": "transformer", "n_layer": hf["n_layer"], "d_model": n_embd, "n_heads": hf["n_head"],
            "d_ff": hf.get("n_inner") or 4 * n_embd, "n_ctx": hf["n_positions"],
            "tie_embeddings": hf.get("tie_word_embeddings", True), "init_from": f"hf:{directory.resolve()}"}


def load_params(spec: str, m: ModelConfig) -> dict:
    """jscale parameters from model.init_from = "hf:DIR", checked name by name and shape by shape against m."""
    from safetensors.numpy import load_file

    directory = Path(spec[len("hf:"):] if spec.startswith("hf:") else spec).expanduser()
    _read_config(directory)
    path = directory / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"model.init_from: {directory} has no model.safetensors")
    try:
        tensors = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
    except Exception as e:  # noqa: BLE001 (a damaged file)
        reason = " ".join(str(e).split())[:120]
        raise ConfigError(f"model.init_from: {path}: not a safetensors file ({reason})") from None
    if m.kind != "transformer":
        raise ConfigError(f"model.init_from: GPT-2 weights start a transformer, not a {m.kind}")

    def take(name: str, shape: tuple[int, ...], transpose: bool = False) -> np.ndarray:
        if name not in tensors:
            raise ConfigError(f"model.init_from: {path} has no tensor {name}")
        x = tensors[name].T if transpose else tensors[name]
        if x.shape != shape:
            raise ConfigError(f"model.init_from: {name} has shape {x.shape} in {path}, this config needs {shape}")
        return np.asarray(x, np.float32)

    D, F, V = m.d_model, m.d_ff_, m.vocab_size
    H, K = m.n_heads, m.d_head
    params: dict[str, Any] = {"wte": {"embedding": take("wte.weight", (V, D))},
                              "wpe": {"embedding": take("wpe.weight", (m.n_ctx, D))},
                              "ln_f": {"scale": take("ln_f.weight", (D,)), "bias": take("ln_f.bias", (D,))}}
    for i in range(m.n_layer):
        pre = f"h.{i}."
        dense = lambda n, din, dout: {"kernel": take(pre + n + ".weight", (din, dout)),
                                      "bias": take(pre + n + ".bias", (dout,))}
        params[f"h_{i}"] = {
            "ln_1": {"scale": take(pre + "ln_1.weight", (D,)), "bias": take(pre + "ln_1.bias", (D,))},
            "ln_2": {"scale": take(pre + "ln_2.weight", (D,)), "bias": take(pre + "ln_2.bias", (D,))},
            "attn": {"c_attn": dense("attn.c_attn", D, 3 * H * K), "c_proj": dense("attn.c_proj", H * K, D)},
            "mlp": {"c_fc": dense("mlp.c_fc", D, F), "c_proj": dense("mlp.c_proj", F, D)}}
    if f"h.{m.n_layer}.ln_1.weight" in tensors:
        raise ConfigError(f"model.init_from: {path} has more than model.n_layer = {m.n_layer} blocks")
    if not m.tie_embeddings:
        params["lm_head"] = {"kernel": take("lm_head.weight", (D, V), transpose=True)}
    return params
