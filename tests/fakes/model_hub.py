"""A stand-in for the Hugging Face hub, for a cluster that cannot reach it: the `resolve` route
that `hf://` sources download from (`GET /OWNER/REPO/resolve/REVISION/PATH`), serving local
files with Range requests as the hub's file servers do, and a record of every request.

Model servers reach it through `HF_ENDPOINT`, the same setting that points them at a mirror
or an air-gapped hub on a real cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tests.fakes.platform import FakePlatform


@dataclass(frozen=True)
class HubRequest:
    repository: str
    path: str
    range: str | None
    authorization: str | None


class FakeModelHub(FakePlatform):
    def __init__(self, files: dict[str, Path]) -> None:
        """`files` maps OWNER/REPO/PATH to the local file served under it."""
        super().__init__()
        self.files = files
        self.requests: list[HubRequest] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{owner}/{repo}/resolve/{revision}/{path:.+}", self._resolve)
        return app

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        repository = f"{info['owner']}/{info['repo']}"
        self.requests.append(
            HubRequest(
                repository,
                info["path"],
                request.headers.get("Range"),
                request.headers.get("Authorization"),
            )
        )
        local = self.files.get(f"{repository}/{info['path']}")
        if local is None:
            # What the hub answers for a file it does not have.
            raise web.HTTPNotFound(
                text="Entry not found", headers={"X-Error-Code": "EntryNotFound"}
            )
        return web.FileResponse(local, headers={"Content-Type": "application/octet-stream"})

    def fetched(self, path: str) -> list[HubRequest]:
        return [r for r in self.requests if f"{r.repository}/{r.path}" == path]
