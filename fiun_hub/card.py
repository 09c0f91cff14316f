"""The model card (``README.md``): YAML front matter with the lineage. The schema is documented in
docs/card-schema.md.

Cards are read and written the way huggingface_hub's ``ModelCard`` / ``ModelCardData`` read and write them (same
front-matter block, same key order, same YAML text), but without their round trip for the common case: the YAML
is parsed with libyaml's ``CSafeLoader`` and dumped with ``CDumper`` (when PyYAML has libyaml; the pure-Python
ones otherwise). Only a card that needs huggingface_hub's own handling (``model-index`` / ``eval_results``, keys
that are not strings, odd ``tags``) goes through ``ModelCardData``, and text the C emitter could lay out
differently (control characters, empty or very long keys, characters outside the BMP) through PyYAML's pure-Python
``Dumper``, so a rendered card is byte for byte what ``ModelCardData.to_yaml`` writes.

```yaml
library_name: timm
base_model: [org/parent-a, org/parent-b]      # direct parents, ids only (HF standard)
base_model_relation: merge                    # finetune | merge | adapter | quantized (always set)
tags: [fiun-hub]
fiun:
  parents: [{repo: org/parent-a, revision: <40 hex>}, ...]
  labels: [tshirt, trouser, ...]              # head-row order
  fim: {file: fim.safetensors, classes_file: fim-classes.safetensors, layers: [...], estimator: normalized}
  unlearned: [{request: ..., classes: [...], origins: [...], from_revision: ..., alpha: ..., lambda: ..., estimator: ...,
               reference: ..., sidecar: ..., at: ...}]   # docs/card-schema.md
```
"""
from __future__ import annotations

import datetime as _dt
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import yaml

from .constants import FIM_CLASSES_FILE, FIM_FILE, MAX_LIST, RELATIONS, TAG
from .errors import CardError, FiunError
from .forget_record import ForgetRecord, RecordError, check_record, forget_records  # (re-exported: the record's home)
from .ids import COMMIT_RE, validate_repo_id

MAX_CARD_BYTES = 1 << 20  # a card larger than this is refused before YAML parsing
DEFAULT_BODY = "\n# {repo}\n\nA timm classifier stored by fiun-hub. Its lineage lives in the front matter above.\n"


@dataclass
class ParentRef:
    repo: str
    revision: str

    def to_dict(self) -> dict:
        return {"repo": self.repo, "revision": self.revision}


@dataclass
class CardMeta:
    """The lineage facts of one revision's card."""

    parents: list[ParentRef] = field(default_factory=list)
    relation: str | None = None
    labels: list[str] = field(default_factory=list)
    fim: dict[str, Any] | None = None
    # the forget records as the card holds them (plain data, written back as they are); typed: ``records``
    unlearned: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # other front-matter keys, kept as they were

    @property
    def base_model(self) -> list[str]:
        return [p.repo for p in self.parents]

    @property
    def records(self) -> list[ForgetRecord]:
        """The forget records (``unlearned``) as :class:`~fiun_hub.forget_record.ForgetRecord`, oldest first."""
        return forget_records(self.unlearned)

    def record(self, request_id: str) -> ForgetRecord | None:
        """The record of forget request ``request_id``, or None when the card carries none."""
        return next((r for r in self.records if r.request == request_id), None)


def _fail(where: str, msg: str) -> CardError:
    return CardError(f"{where}: {msg}" if where else msg)


def _str_list(value: Any, what: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(isinstance(v, (str, int)) for v in value):
        raise _fail(where, f"card field {what} must be a list of strings")
    return [str(v) for v in value]


def parse_card(text: str | bytes, where: str = "") -> CardMeta:
    """Parse a card's front matter (see :func:`parse_card_full`)."""
    return parse_card_full(text, where)[0]


_PARSED: "OrderedDict[str, tuple[dict, str]]" = OrderedDict()
_PARSED_MAX = 4096

# huggingface_hub.repocard.REGEX_YAML_BLOCK: the front-matter block ModelCard reads
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
# ModelCardData's own fields, in the order its to_dict() (and so to_yaml()) lists them, before any other key
_HF_FIELDS = ("base_model", "datasets", "eval_results", "language", "library_name", "license", "license_name",
              "license_link", "metrics", "model_name", "pipeline_tag", "tags")
_HF_SPECIAL = ("model-index", "eval_results", "ignore_metadata_errors")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CDumper", yaml.Dumper)


def _hf_dict(data: dict) -> dict | None:
    """What ``ModelCardData(**data).to_dict()`` returns, without building one: its fields first in its order,
    then the other keys as given, None values dropped, ``tags`` made a list without repeats. None when the data
    needs huggingface_hub's own handling (``model-index``, ``eval_results``, non-string keys, ``tags`` neither a
    string nor a list): the caller then asks ModelCardData itself."""
    if not all(isinstance(k, str) for k in data) or any(k in data for k in _HF_SPECIAL):
        return None
    out: dict[str, Any] = {}
    for k in _HF_FIELDS:
        v = data.get(k)
        if k == "tags" and v is not None:
            if isinstance(v, str):
                v = [v]
            elif not isinstance(v, list):
                return None
            unique: list = []
            for tag in v:
                if tag not in unique:
                    unique.append(tag)
            v = unique
        if v is not None:
            out[k] = v
    for k, v in data.items():
        if k not in out and k not in _HF_FIELDS and v is not None:
            out[k] = v
    return out


def _front_matter(text: str) -> tuple[dict, str]:
    """``(front-matter data as ModelCardData.to_dict() gives it, Markdown body)`` of a card's text; raises what
    ModelCard would (yaml errors, a block that is not a mapping, ...)."""
    match = _YAML_BLOCK.search(text)
    if not match:
        return {}, text
    raw = yaml.load(match.group(2), Loader=_LOADER)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("repo card metadata block should be a dict")
    body = text[match.end():]
    data = _hf_dict(raw)
    if data is None:
        from huggingface_hub import ModelCardData

        data = ModelCardData(**raw, ignore_metadata_errors=False).to_dict()
    return data, body


def parse_card_full(text: str | bytes, where: str = "") -> tuple[CardMeta, str]:
    """Parse a card into its front matter as :class:`CardMeta` and the Markdown body below it; malformed or
    ill-typed YAML raises :class:`CardError`.

    >>> meta, body = parse_card_full("---\\nbase_model: a/b\\nbase_model_relation: finetune\\n"
    ...     "fiun: {parents: [{repo: a/b, revision: '%s'}], labels: [x, y]}\\n---\\nhello\\n" % ("0" * 40))
    >>> meta.base_model, meta.relation, meta.labels, body.strip()
    (['a/b'], 'finetune', ['x', 'y'], 'hello')
    """
    if isinstance(text, bytes):
        if len(text) > MAX_CARD_BYTES:
            raise _fail(where, f"card is {len(text)} bytes, more than the {MAX_CARD_BYTES} allowed")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(where, "card is not UTF-8 text") from None
    if len(text) > MAX_CARD_BYTES:
        raise _fail(where, f"card is larger than the {MAX_CARD_BYTES} bytes allowed")
    # Cards are immutable blobs: parse each distinct text once per process. meta_from_dict never changes the
    # data it is given (it validates a copy), so the cached data is shared, not copied.
    hit = _PARSED.get(text)
    if hit is not None:
        return meta_from_dict(hit[0], where), hit[1]
    try:
        data, body = _front_matter(text)
    except RecursionError:
        raise _fail(where, "card front matter is nested too deeply") from None
    except Exception as exc:  # yaml errors, "metadata block should be a dict", ...
        msg = " ".join(str(exc).split())[:200]
        raise _fail(where, f"malformed card front matter: {msg}") from None
    meta = meta_from_dict(data, where)  # validates before caching
    _remember(text, data, body)
    return meta, body


def _remember(text: str, data: dict, body: str) -> None:
    _PARSED[text] = (data, body)
    if len(_PARSED) > _PARSED_MAX:
        _PARSED.popitem(last=False)


MAX_NODES = 200_000  # values in one card's front matter (YAML aliases could otherwise expand exponentially)


def front_matter_data(value: Any, where: str, depth: int = 0, budget: list[int] | None = None) -> Any:
    """Front-matter values as JSON data: YAML dates and times become ISO strings; other types are refused."""
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise _fail(where, f"card front matter holds more than {MAX_NODES} values (a YAML alias bomb?)")
    if depth > 50:
        raise _fail(where, "card front matter is nested too deeply")
    if isinstance(value, dict):
        return {str(k): front_matter_data(v, where, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [front_matter_data(v, where, depth + 1, budget) for v in value]
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat().replace("+00:00", "Z")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise _fail(where, f"card front matter holds a {type(value).__name__} value, which is not plain data")


def meta_from_dict(data: dict[str, Any], where: str = "") -> CardMeta:
    """Validate front-matter data (as a dict) against the schema."""
    if not isinstance(data, dict):
        raise _fail(where, "card front matter must be a mapping")
    data = front_matter_data(data, where)
    base = _str_list(data.pop("base_model", None), "base_model", where)
    relation = data.pop("base_model_relation", None)
    if relation is not None and relation not in RELATIONS:
        raise _fail(where, f"base_model_relation {relation!r} is not one of {', '.join(RELATIONS)}")
    fiun = data.pop("fiun", None) or {}
    if not isinstance(fiun, dict):
        raise _fail(where, "card field fiun must be a mapping")
    raw_parents = fiun.get("parents") or []
    if not isinstance(raw_parents, list) or len(raw_parents) > 1000:
        raise _fail(where, "card field fiun.parents must be a list of {repo, revision}")
    parents = []
    for p in raw_parents:
        if not isinstance(p, dict) or not isinstance(p.get("repo"), str) or not isinstance(p.get("revision"), str):
            raise _fail(where, "each fiun.parents entry needs repo and revision strings")
        try:
            validate_repo_id(p["repo"])
        except FiunError as exc:
            raise _fail(where, f"fiun.parents: {exc}") from None
        if not COMMIT_RE.match(p["revision"]):
            raise _fail(where, f"fiun.parents: revision of {p['repo']} must be a 40-hex commit id, got {p['revision']!r}")
        parents.append(ParentRef(p["repo"], p["revision"]))
    pinned = [p.repo for p in parents]
    for repo in base:
        try:
            validate_repo_id(repo)
        except FiunError as exc:
            raise _fail(where, f"base_model: {exc}") from None
        if repo not in pinned:
            # A parent named only by base_model (e.g. a card written by another tool) is unpinned.
            parents.append(ParentRef(repo, ""))
    labels = _str_list(fiun.get("labels"), "fiun.labels", where)
    if len(set(labels)) != len(labels):
        raise _fail(where, "card field fiun.labels has duplicates")
    fim = fiun.get("fim")
    if fim is not None and not isinstance(fim, dict):
        raise _fail(where, "card field fiun.fim must be a mapping")
    unlearned = fiun.get("unlearned") or []
    if not isinstance(unlearned, list) or not all(isinstance(u, dict) for u in unlearned) or len(unlearned) > MAX_LIST:
        raise _fail(where, "card field fiun.unlearned must be a list of records")
    for u in unlearned:
        check_record(u, where)
    extra_fiun = {k: v for k, v in fiun.items() if k not in ("parents", "labels", "fim", "unlearned")}
    if extra_fiun:
        data["fiun"] = extra_fiun
    return CardMeta(parents=parents, relation=relation, labels=labels, fim=fim, unlearned=unlearned, extra=data)


def claims_without_forget(records: list[dict], carried: list[dict], replaces: str | None) -> list[dict]:
    """The records of a card being written that cannot be the record of a forget: every record the revision it
    replaces did not carry must name that revision as its ``from_revision`` (a forget of exactly that head).

    The rule of every write that is not fiun-hub's own local forget: ``push`` publishes new weights, so it keeps
    none of a folder's records (it writes its card without them); serve's commit refuses what this returns (a
    remote ``fiun-hub forget`` passes: its records name the head they replace). Either way a record is a claim:
    only the ledger proves a takedown (fiun_hub.compliance.ledger_proof)."""
    return [u for u in records if u not in carried
            and (not replaces or ForgetRecord.from_dict(u).from_revision != replaces)]


def meta_to_dict(meta: CardMeta) -> dict[str, Any]:
    """Front-matter dict of ``meta`` (HF keys first, then ``fiun``)."""
    data: dict[str, Any] = {"library_name": "timm"}
    data.update({k: v for k, v in meta.extra.items() if k != "fiun"})
    tags = list(data.get("tags") or [])
    if TAG not in tags:
        tags.append(TAG)
    data["tags"] = tags
    if meta.parents:
        data["base_model"] = meta.base_model if len(meta.parents) > 1 else meta.parents[0].repo
        data["base_model_relation"] = meta.relation or ("merge" if len(meta.parents) > 1 else "finetune")
    fiun: dict[str, Any] = dict(meta.extra.get("fiun") or {})
    fiun["parents"] = [p.to_dict() for p in meta.parents if p.revision]  # unpinned ones live in base_model only
    fiun["labels"] = list(meta.labels)
    if meta.fim:
        fiun["fim"] = dict(meta.fim)
    if meta.unlearned:
        fiun["unlearned"] = [dict(u) for u in meta.unlearned]
    data["fiun"] = fiun
    return data


# text both emitters write alike: no C0/C1 controls, no special line breaks or BOM, nothing outside the BMP
_PLAIN_TEXT = re.compile("[^\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff\U00010000-\U0010ffff]*\\Z")


def _c_dumpable(value: Any, depth: int = 0) -> bool:
    """True when libyaml's emitter writes ``value`` exactly as PyYAML's pure-Python one does: plain data whose
    strings hold no control or special line-break characters and stay in the BMP, mapping keys non-empty and
    at most 100 characters (the two emitters choose differently for long "simple keys" and empty ones)."""
    if depth > 60:
        return False
    t = type(value)
    if t is str:
        return _PLAIN_TEXT.match(value) is not None
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not 0 < len(k) <= 100 or _PLAIN_TEXT.match(k) is None \
                    or not _c_dumpable(v, depth + 1):
                return False
        return True
    if t is list:
        return all(_c_dumpable(v, depth + 1) for v in value)
    return value is None or t in (bool, int, float)


_plain = front_matter_data  # the old private name (serve now imports the public one; kept for other callers)


def _copy_plain(value: Any) -> Any:
    if type(value) is dict:
        return {k: _copy_plain(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy_plain(v) for v in value]
    return value


def _front_matter_yaml(data: dict[str, Any]) -> tuple[str, dict | None]:
    hf = _hf_dict(data)
    if hf is None:
        from huggingface_hub import ModelCardData

        return ModelCardData(**data).to_yaml(), None
    plain = _c_dumpable(hf)
    text = yaml.dump(hf, Dumper=_DUMPER if plain else yaml.Dumper, sort_keys=False, allow_unicode=True).strip()
    return text, (hf if plain else None)


def front_matter_yaml(data: dict[str, Any]) -> str:
    """``ModelCardData(**data).to_yaml()``: the same text, built directly when it can be."""
    return _front_matter_yaml(data)[0]


def render_card(meta: CardMeta, body: str | None = None, repo: str = "") -> str:
    """The full ``README.md`` text for ``meta``: front matter (the YAML ``ModelCardData.to_yaml`` writes, see
    :func:`front_matter_yaml`), then ``body``."""
    data = meta_to_dict(meta)
    body = body if body is not None else DEFAULT_BODY.format(repo=repo or "model")
    front, plain = _front_matter_yaml(data)
    text = f"---\n{front}\n---\n" + body
    # What we just wrote parses back to this data (tests check the round trip), so the index need not re-parse
    # it. Plain data only: anything else is left for a real parse to judge.
    if plain is not None:
        _remember(text, _copy_plain(plain), body)
    return text


def card_body(text: str) -> str:
    """The Markdown below the front matter (kept when a card is rewritten)."""
    try:
        return parse_card_full(text)[1]
    except CardError:
        return ""


def fim_entry(layers: list[str], estimator: str) -> dict[str, Any]:
    return {"file": FIM_FILE, "classes_file": FIM_CLASSES_FILE, "layers": list(layers), "estimator": estimator}
