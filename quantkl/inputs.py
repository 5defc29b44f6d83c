"""What a dump evaluates: text files joined by a separator, or chat
conversations (JSONL) formatted with the model's own template.

A dump file holds only token ids, so the description of its input (files and
their SHA-256, separator, template) is written beside it as
``BASE.kld.input.json`` and copied into the records of later scores.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .files import named_errors, regular_file_size, written_whole

DEFAULT_SEPARATOR = "\n\n"
ROLES = ("system", "user", "assistant", "tool")


def description_path(dump_path: str | os.PathLike) -> str:
    return os.fspath(dump_path) + ".input.json"


def read_description(dump_path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The input description beside a dump, or None (llama-perplexity's dumps have none)."""
    path = description_path(dump_path)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _read_bytes(path: str, what: str) -> bytes:
    regular_file_size(path, what)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read {what}: {e.strerror}") from None


def read_text(path: str | os.PathLike) -> str:
    data = _read_bytes(os.fspath(path), "text file")
    if not data.strip():
        raise ValueError(f"{path}: the text file is empty")
    return data.decode("utf-8", errors="replace")


def read_chat(path: str | os.PathLike) -> List[List[Dict[str, str]]]:
    """Conversations from a JSONL file, one ``{"messages": [{"role", "content"}, ...]}``
    per line; ValueError naming the line and field that is wrong."""
    path = os.fspath(path)
    text = _read_bytes(path, "chat file").decode("utf-8", errors="replace")
    conversations = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n} is not JSON ({e.msg})") from None
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f'{path}: line {n} has no "messages" list')
        for k, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise ValueError(f'{path}: line {n}, message {k}: needs string "role" and '
                                 f'"content"')
            if m["role"] not in ROLES:
                raise ValueError(f"{path}: line {n}, message {k}: role {m['role']!r} is not one "
                                 f"of {', '.join(ROLES)}")
        conversations.append([{"role": m["role"], "content": m["content"]} for m in msgs])
    if not conversations:
        raise ValueError(f"{path}: no conversations")
    return conversations


def _file_entry(path: str) -> Dict[str, Any]:
    data = _read_bytes(path, "input file")
    return {"file": os.path.basename(path), "path": os.path.abspath(path),
            "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class EvalText:
    """The text a base model is evaluated on.

    ``paths``: text files, joined by ``separator``; or JSONL files of chat
    conversations (names ending ``.jsonl``), each conversation formatted by
    the model's chat template and the results concatenated. The two kinds do
    not mix in one dump.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], separator: str = DEFAULT_SEPARATOR):
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("no input text given")
        chat = [p.lower().endswith(".jsonl") for p in self.paths]
        if any(chat) and not all(chat):
            raise ValueError("give text files or chat JSONL files, not both in one dump")
        self.kind = "chat" if chat[0] else "text"
        self.separator = separator
        self._template: Optional[str] = None
        self._conversations = 0

    def tokenize(self, runner) -> np.ndarray:
        """The whole input as the model's token ids (BOS added as its vocabulary asks)."""
        if self.kind == "text":
            return runner.tokenize(self.separator.join(read_text(p) for p in self.paths))
        template = runner.chat_template()
        if template is None:
            raise ValueError(f"{runner.path} has no chat template in its GGUF metadata: give "
                             f"plain text files instead of {os.path.basename(self.paths[0])}")
        parts = []
        for p in self.paths:
            for conv in read_chat(p):
                parts.append(runner.apply_chat_template(template, conv))
        self._template, self._conversations = template, len(parts)
        # the template writes special-token markers; they are read as the tokens they name
        return runner.tokenize("".join(parts), special=True)

    def description(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"kind": self.kind, "files": [_file_entry(p) for p in self.paths]}
        if self.kind == "text":
            d["separator"] = self.separator
        else:
            d["conversations"] = self._conversations
            d["chat_template"] = {
                "source": "GGUF tokenizer.chat_template, applied by llama_chat_apply_template",
                "sha256": hashlib.sha256((self._template or "").encode()).hexdigest(),
                "text": self._template}
        return d

    def write_description(self, dump_path: str, runner) -> None:
        """``DUMP.input.json``, written whole (partial file renamed) before the dump is."""
        d = self.description()
        d["model"] = {"file": os.path.basename(runner.path), "path": os.path.abspath(runner.path)}
        d["model_options"] = runner.settings()
        path = description_path(dump_path)
        with written_whole(path) as (partial,), named_errors(partial), open(partial, "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")
