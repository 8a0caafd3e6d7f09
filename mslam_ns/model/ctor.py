"""Parse the MASt3R constructor string stored in a checkpoint, without ``eval``.

The official checkpoints store the training-time constructor as a string, e.g.
``AsymmetricMASt3R(pos_embed='RoPE100', img_size=(512, 512), depth_mode=('exp', -inf, inf), ...)``.
This module tokenises and parses that call form (``Name(kw=literal, ...)`` with strings, ints, floats,
``inf``/``-inf``, tuples/lists, True/False/None), applies the rewrites of the official loader
(``ManyAR_PatchEmbed`` -> ``PatchEmbedDust3R``, ``landscape_only=False``) and turns it into a typed
`Mast3rConfig`. Anything outside that grammar, unknown class names and unsupported options are refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: class names the parser accepts (the official loader instantiates AsymmetricMASt3R only)
KNOWN_CLASSES = ("AsymmetricMASt3R",)

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<float>[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)
      | (?P<int>[0-9]+)
      | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
      | (?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
      | (?P<op>[(),=\[\]+-])
    )""",
    re.VERBOSE,
)

_NAMED_CONSTANTS: dict[str, Any] = {"True": True, "False": False, "None": None, "inf": math.inf}


class CtorError(ValueError):
    """The constructor string is malformed or asks for something this implementation does not support."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise CtorError(f"unexpected character {text[pos]!r} at offset {pos} in constructor string")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _unquote(s: str) -> str:
    body = s[1:-1]
    if "\\" in body:
        if re.search(r"\\[^\\'\"]", body):
            raise CtorError(f"unsupported escape sequence in string literal {s}")
        body = re.sub(r"\\(.)", r"\1", body)
    return body


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise CtorError("constructor string ends unexpectedly")
        if (kind is not None and tok[0] != kind) or (value is not None and tok[1] != value):
            want = value if value is not None else kind
            raise CtorError(f"expected {want!r} but found {tok[1]!r} in constructor string")
        self.i += 1
        return tok

    def call(self) -> tuple[str, dict[str, Any]]:
        name = self.take("name")[1]
        self.take("op", "(")
        kwargs: dict[str, Any] = {}
        while True:
            tok = self.peek()
            if tok == ("op", ")"):
                self.take()
                break
            key = self.take("name")[1]
            if key in _NAMED_CONSTANTS:
                raise CtorError(f"invalid keyword name {key!r}")
            self.take("op", "=")
            if key in kwargs:
                raise CtorError(f"keyword {key!r} given twice")
            kwargs[key] = self.literal()
            tok = self.peek()
            if tok == ("op", ","):
                self.take()
            elif tok != ("op", ")"):
                raise CtorError(f"expected ',' or ')' but found {tok[1] if tok else 'end of string'!r}")
        if self.peek() is not None:
            raise CtorError(f"trailing text after the constructor call: {self.peek()[1]!r}")  # type: ignore[index]
        return name, kwargs

    def literal(self) -> Any:
        kind, val = self.take()
        if kind == "op" and val in "+-":
            sign = -1 if val == "-" else 1
            kind, val = self.take()
            if kind == "int":
                return sign * int(val)
            if kind == "float":
                return sign * float(val)
            if kind == "name" and val == "inf":
                return sign * math.inf
            raise CtorError(f"a sign must precede a number, found {val!r}")
        if kind == "int":
            return int(val)
        if kind == "float":
            return float(val)
        if kind == "str":
            return _unquote(val)
        if kind == "name":
            if val in _NAMED_CONSTANTS:
                return _NAMED_CONSTANTS[val]
            raise CtorError(f"unknown name {val!r} in constructor string (only literals are allowed)")
        if kind == "op" and val in "([":
            close = ")" if val == "(" else "]"
            items: list[Any] = []
            while self.peek() != ("op", close):
                items.append(self.literal())
                if self.peek() == ("op", ","):
                    self.take()
                elif self.peek() != ("op", close):
                    raise CtorError(f"expected ',' or {close!r} inside a tuple/list")
            self.take("op", close)
            return tuple(items)
        raise CtorError(f"unexpected token {val!r} in constructor string")


def parse_call(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``Name(kw=literal, ...)`` into (name, kwargs). Raises `CtorError` on anything else."""
    return _Parser(text).call()


@dataclass(frozen=True)
class Mast3rConfig:
    """Everything that sizes and parameterises the network (docs/network.md sections 2-3)."""

    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    rope_freq: float = 100.0
    rope_f0: float = 1.0
    local_feat_dim: int = 24
    hidden_dim_factor: float = 4.0
    two_confs: bool = True
    depth_mode: tuple[str, float, float] = ("exp", -math.inf, math.inf)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)
    desc_conf_mode: tuple[str, float, float] = ("exp", 0.0, math.inf)
    desc_mode: str = "norm"
    norm_im2_in_dec: bool = True

    @property
    def dpt_hooks(self) -> tuple[int, int, int, int]:
        """Indices into [enc, dec_1..dec_L] read by the DPT."""
        L = self.dec_depth
        return (0, L * 2 // 4, L * 3 // 4, L)


# options we accept and either use or (for harmless training-only ones) ignore
_IGNORED = {"img_size", "freeze", "landscape_only", "mask_ratio", "patch_embed_cls"}
_INT_KEYS = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads", "patch_size")


def _mode(value: Any, key: str) -> tuple[str, float, float]:
    if not (
        isinstance(value, tuple)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(v, (int, float)) for v in value[1:])
    ):
        raise CtorError(f"{key} must be a (name, vmin, vmax) tuple, got {value!r}")
    return (value[0], float(value[1]), float(value[2]))


def config_from_kwargs(name: str, kw: dict[str, Any]) -> Mast3rConfig:
    """Validate the parsed constructor (after the loader rewrites) and build a `Mast3rConfig`."""
    if name not in KNOWN_CLASSES:
        raise CtorError(f"unknown model class {name!r} (supported: {', '.join(KNOWN_CLASSES)})")
    kw = dict(kw)
    out: dict[str, Any] = {}
    pe = kw.pop("pos_embed", "cosine")
    m = re.fullmatch(r"RoPE([0-9]+(?:\.[0-9]*)?)", str(pe))
    if m is None:
        raise CtorError(f"unsupported pos_embed {pe!r} (only RoPE<freq> is implemented)")
    out["rope_freq"] = float(m.group(1))
    head_type = kw.pop("head_type", "linear")
    if head_type != "catmlp+dpt":
        raise CtorError(f"unsupported head_type {head_type!r} (only 'catmlp+dpt' is implemented)")
    output_mode = str(kw.pop("output_mode", "pts3d"))
    m = re.fullmatch(r"pts3d\+desc([0-9]+)", output_mode)
    if m is None:
        raise CtorError(f"unsupported output_mode {output_mode!r} (expected 'pts3d+desc<N>')")
    out["local_feat_dim"] = int(m.group(1))
    pe_cls = kw.get("patch_embed_cls", "PatchEmbedDust3R")
    if pe_cls != "PatchEmbedDust3R":
        raise CtorError(f"unsupported patch_embed_cls {pe_cls!r}")
    if kw.get("landscape_only", False) is not False:
        raise CtorError("landscape_only must be False at inference")
    for key in _INT_KEYS:
        if key in kw:
            v = kw.pop(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise CtorError(f"{key} must be a positive int, got {v!r}")
            out[key] = v
    if "mlp_ratio" in kw:
        out["mlp_ratio"] = float(kw.pop("mlp_ratio"))
    for key in ("depth_mode", "conf_mode", "desc_conf_mode"):
        if key in kw:
            v = kw.pop(key)
            if v is None:
                if key == "conf_mode":
                    raise CtorError("conf_mode=None is not supported")
                continue
            out[key] = _mode(v, key)
    if "desc_conf_mode" not in out:  # official postprocess: desc_conf_mode defaults to conf_mode
        out["desc_conf_mode"] = out.get("conf_mode", Mast3rConfig.conf_mode)
    if "two_confs" in kw:
        out["two_confs"] = bool(kw.pop("two_confs"))
    if "desc_mode" in kw:
        dm = kw.pop("desc_mode")
        if dm != "norm":
            raise CtorError(f"unsupported desc_mode {dm!r}")
    if "norm_im2_in_dec" in kw:
        out["norm_im2_in_dec"] = bool(kw.pop("norm_im2_in_dec"))
    for key in list(kw):
        if key in _IGNORED:
            kw.pop(key)
    if kw:
        raise CtorError(f"unsupported constructor option(s): {', '.join(sorted(kw))}")
    cfg = Mast3rConfig(**out)
    if cfg.depth_mode[0] not in ("exp", "square", "linear") or cfg.depth_mode[1:] != (-math.inf, math.inf):
        raise CtorError(f"unsupported depth_mode {cfg.depth_mode!r}")
    for key in ("conf_mode", "desc_conf_mode"):
        if getattr(cfg, key)[0] not in ("exp", "sigmoid"):
            raise CtorError(f"unsupported {key} {getattr(cfg, key)!r}")
    if cfg.enc_embed_dim % cfg.enc_num_heads or cfg.dec_embed_dim % cfg.dec_num_heads:
        raise CtorError("embedding dims must be divisible by the number of heads")
    if (cfg.enc_embed_dim // cfg.enc_num_heads) % 4 or (cfg.dec_embed_dim // cfg.dec_num_heads) % 4:
        raise CtorError("RoPE2D needs head dims divisible by 4")
    if cfg.dec_depth <= 9:
        raise CtorError(f"the catmlp+dpt head needs dec_depth > 9, got {cfg.dec_depth}")
    return cfg


def rewrite_like_official_loader(text: str) -> str:
    """The string edits of the official ``load_model`` (for logging); parsing does not depend on them."""
    s = text.replace("ManyAR_PatchEmbed", "PatchEmbedDust3R")
    if "landscape_only" not in s:
        s = s[: s.rindex(")")] + ", landscape_only=False)" if ")" in s else s
    else:
        s = s.replace(" ", "").replace("landscape_only=True", "landscape_only=False")
    return s


def parse_model_string(text: str) -> Mast3rConfig:
    """Constructor string (as stored in ``ckpt['args'].model``) -> validated `Mast3rConfig`."""
    if not isinstance(text, str) or len(text) > 10_000:
        raise CtorError("the model constructor must be a string of reasonable length")
    name, kw = parse_call(text)
    if kw.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kw["patch_embed_cls"] = "PatchEmbedDust3R"
    kw["landscape_only"] = False
    return config_from_kwargs(name, kw)
