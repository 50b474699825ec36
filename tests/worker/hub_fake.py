"""A fake Hugging Face hub on 127.0.0.1 for the checkpoint-cache tests (point HF_ENDPOINT at `url`).

It serves just what huggingface_hub 2.4's `model_info` and `snapshot_download` call:
  GET  /api/models/<repo>/revision/<rev>       repo info (sha, siblings with lfs sha256 when ?blobs=true)
  GET  /api/models/<repo>/tree/<rev>           the recursive file listing
  HEAD /<repo>/resolve/<rev>/<path>            X-Repo-Commit, ETag, Content-Length
  GET  /<repo>/resolve/<rev>/<path>            the bytes, honouring `Range: bytes=N-` (206)
and counts every request, so tests can prove "downloaded once" and "resumed with a Range request".
Faults: `drop_once` paths lose the connection half-way through their first GET; `slow` paths trickle out.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = "a" * 40
    branches: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.branches.setdefault("main", self.commit)

    def resolve(self, revision: str) -> str | None:
        if revision == self.commit:
            return revision
        return self.branches.get(revision)

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(".safetensors")


@dataclass
class Hit:
    method: str
    path: str
    range: str | None


class FakeHub:
    def __init__(self, *repos: FakeRepo):
        self.repos = {r.repo_id: r for r in repos}
        self.hits: list[Hit] = []
        self.drop_once: set[str] = set()  # repo file paths whose first GET is cut off half-way
        self.slow: dict[str, float] = {}  # repo file path -> seconds to sleep per 1 KiB chunk
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def file_gets(self, path: str | None = None) -> list[Hit]:
        """GET requests for repo files (optionally one file)."""
        return [h for h in self.hits if h.method == "GET" and "/resolve/" in h.path
                and (path is None or h.path.endswith("/" + path))]  # fmt: skip

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def _take_drop(self, path: str) -> bool:
        with self._lock:
            if path in self.drop_once:
                self.drop_once.discard(path)
                return True
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, *, body: bool) -> None:
                url = urlsplit(self.path)
                hub._record(Hit(self.command, url.path, self.headers.get("Range")))
                api = re.fullmatch(r"/api/models/(.+?)/(revision|tree)/([^/]+)", url.path)
                if api:
                    return self._api(unquote(api.group(1)), api.group(2), unquote(api.group(3)), url.query)
                resolve = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", url.path)
                if resolve:
                    repo_id, rev, path = (
                        unquote(resolve.group(1)),
                        unquote(resolve.group(2)),
                        resolve.group(3),
                    )
                    return self._file(repo_id, rev, unquote(path), body=body)
                self._error(404, "EntryNotFound")

            def _repo_and_commit(self, repo_id: str, rev: str) -> tuple[FakeRepo, str] | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound")
                    return None
                commit = repo.resolve(rev)
                if commit is None:
                    self._error(404, "RevisionNotFound")
                    return None
                return repo, commit

            def _api(self, repo_id: str, kind: str, rev: str, query: str) -> None:
                found = self._repo_and_commit(repo_id, rev)
                if found is None:
                    return
                repo, commit = found
                if kind == "revision":
                    siblings = []
                    for path, data in sorted(repo.files.items()):
                        sibling = {"rfilename": path}
                        if "blobs=" in query:
                            sibling.update(size=len(data), blobId=_oid(data))
                            if repo.is_lfs(path):
                                sibling["lfs"] = {"size": len(data), "sha256": _sha(data), "pointerSize": 134}
                        siblings.append(sibling)
                    payload = {"id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings}
                else:
                    payload = []
                    for path, data in sorted(repo.files.items()):
                        entry = {"type": "file", "path": path, "size": len(data), "oid": _oid(data)}
                        if repo.is_lfs(path):
                            entry["lfs"] = {"oid": _sha(data), "size": len(data), "pointerSize": 134}
                        payload.append(entry)
                self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def _file(self, repo_id: str, rev: str, path: str, *, body: bool) -> None:
                found = self._repo_and_commit(repo_id, rev)
                if found is None:
                    return
                repo, commit = found
                if path not in repo.files:
                    return self._error(404, "EntryNotFound", {"X-Repo-Commit": commit})
                data = repo.files[path]
                etag = _sha(data) if repo.is_lfs(path) else _oid(data)
                headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}  # fmt: skip
                start, status = 0, 200
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and body:
                    start, status = int(match.group(1)), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                chunk = data[start:]
                headers["Content-Length"] = str(len(chunk))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                if hub._take_drop(path):
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the client sees the body end early
                    return
                delay = hub.slow.get(path, 0.0)
                for i in range(0, len(chunk), 1024 if delay else len(chunk) or 1):
                    self.wfile.write(chunk[i : i + (1024 if delay else len(chunk))])
                    if delay:
                        self.wfile.flush()
                        time.sleep(delay)

            def _error(self, status: int, code: str, extra: dict | None = None) -> None:
                body = json.dumps({"error": code}).encode()
                self._send(
                    status, body, {"X-Error-Code": code, "Content-Type": "application/json", **(extra or {})}
                )

            def _send(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler


def fill_in_child(repo_id: str, revision: str, cache: str, endpoint: str, out: str | None = None) -> None:
    """A job in another process (multiprocessing target): fill or reuse the cache, write what it resolved."""
    import os
    from pathlib import Path

    from worker import checkpoint_download
    from worker.checkpoints import ensure_model

    os.environ["HF_ENDPOINT"] = endpoint
    checkpoint_download.CHUNK = 1024  # partial bytes reach the disk, as with a large file
    resolved = ensure_model(repo_id, revision, cache_dir=Path(cache))
    if out:
        Path(out).write_text(json.dumps([f.to_dict() for f in resolved.files]))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def diffusers_like_files(seed: int = 0) -> dict[str, bytes]:
    """A small Wan2.2-shaped Diffusers repo: a sharded fp32 expert, an unsharded fp32 expert, an fp32 VAE,
    a bf16 text encoder, configs and a tokenizer file. Tensors are random, so every seed gives other bytes."""
    import torch
    from safetensors.torch import save as save_bytes

    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    def config(name: str) -> bytes:
        return json.dumps({"_class_name": name, "_diffusers_version": "0.42.1"}).encode()

    shard1 = {"blocks.0.attn.weight": rand(64, 64), "blocks.0.attn.bias": rand(64),
              "blocks.0.step": torch.arange(4, dtype=torch.int64)}  # fmt: skip
    shard2 = {"blocks.1.attn.weight": rand(64, 64), "proj_out.weight": rand(16, 64)}
    names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    weight_map = {k: names[0] for k in shard1} | {k: names[1] for k in shard2}
    total = sum(t.numel() * t.element_size() for t in (shard1 | shard2).values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return {
        "model_index.json": json.dumps({"_class_name": "WanPipeline", "boundary_ratio": 0.875}).encode(),
        "transformer/config.json": config("WanTransformer3DModel"),
        f"transformer/{names[0]}": save_bytes(shard1, metadata={"format": "pt"}),
        f"transformer/{names[1]}": save_bytes(shard2, metadata={"format": "pt"}),
        "transformer/diffusion_pytorch_model.safetensors.index.json": json.dumps(index).encode(),
        "transformer_2/config.json": config("WanTransformer3DModel"),
        "transformer_2/diffusion_pytorch_model.safetensors": save_bytes({"w": rand(32, 32), "b": rand(32)}),
        "vae/config.json": config("AutoencoderKLWan"),
        "vae/diffusion_pytorch_model.safetensors": save_bytes({"conv.weight": rand(8, 4, 3, 3)}),
        "text_encoder/config.json": json.dumps({"architectures": ["UMT5EncoderModel"]}).encode(),
        "text_encoder/model.safetensors": save_bytes({"shared.weight": rand(50, 16, dtype=torch.bfloat16)}),
        "tokenizer/tokenizer.json": json.dumps({"version": "1.0", "seed": seed}).encode(),
    }
