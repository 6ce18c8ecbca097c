"""A fake Hub behind huggingface_hub's own HTTP client: only the transport is replaced.

``huggingface_hub`` sends every request through one ``httpx2.Client`` made by a factory; a test
swaps in a client whose transport answers the few endpoints an upload touches. Everything above
it (``HfApi``, commit building, pre-upload, YAML validation, auth headers) is the real code.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import httpx2
from huggingface_hub import constants
from huggingface_hub.utils import _http
from huggingface_hub.utils.sha import git_hash


@dataclass
class MockHub:
    requests: list[httpx2.Request] = field(default_factory=list)
    created: list[dict] = field(default_factory=list)
    settings: list[dict] = field(default_factory=list)
    committed: dict[str, bytes] = field(default_factory=dict)
    #: Every file of every commit, ``(repo id, path, bytes)``, in order.
    uploads: list[tuple[str, str, bytes]] = field(default_factory=list)
    commits: int = 0
    refuse: set[str] = field(default_factory=set)
    #: What ``auth-check`` answers per repo id: ``ok`` or ``gated``; any other id is not found.
    access: dict[str, str] = field(default_factory=dict)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/api/agent-harnesses":
            return httpx2.Response(200, json={})
        if path in self.refuse:
            return httpx2.Response(403, json={"error": "You don't have the rights to create this repo"})
        if path.endswith(
            "/auth-check"
        ):  # HfApi.auth_check; the Hub's error codes, as hf_raise_for_status reads them
            answer = self.access.get(path.split("/", 3)[3].removesuffix("/auth-check"))
            if answer == "ok":
                return httpx2.Response(200, json={})
            code, status = ("GatedRepo", 403) if answer == "gated" else ("RepoNotFound", 404)
            return httpx2.Response(status, headers={"X-Error-Code": code}, json={"error": code})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            return httpx2.Response(
                200,
                json={"url": f"https://huggingface.co/{body['type']}s/{body['organization']}/{body['name']}"},
            )
        if path.endswith("/settings"):
            self.settings.append(json.loads(request.content))
            return httpx2.Response(200, json={})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if "/preupload/" in path:
            # As the Hub answers: the git oid of a file it already holds, so unchanged files are not re-sent.
            files = json.loads(request.content)["files"]
            modes = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": self.oid(f["path"]),
                }
                for f in files
            ]
            return httpx2.Response(200, json={"files": modes})
        if "/commit/" in path:
            self.commits += 1
            for line in request.content.decode().splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    content = base64.b64decode(op["value"]["content"])
                    self.committed[op["value"]["path"]] = content
                    self.uploads.append((path.split("/commit/")[0], op["value"]["path"], content))
            return httpx2.Response(
                200, json={"commitUrl": "https://huggingface.co/c/1", "commitOid": self.head}
            )
        if "/revision/" in path:  # repo_info, asked when a commit would change nothing
            return httpx2.Response(200, json={"id": path.split("/revision/")[0], "sha": self.head})
        return httpx2.Response(404, json={"error": f"mock hub has no {request.method} {path}"})

    @property
    def head(self) -> str:
        return f"{self.commits:040x}"

    def oid(self, path: str) -> str | None:
        return git_hash(self.committed[path]) if path in self.committed else None


def install_mock_hub(monkeypatch) -> MockHub:
    """Route every huggingface_hub request of this test to a new :class:`MockHub`."""
    hub = MockHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # What ``set_client_factory`` does, through monkeypatch so the real client comes back afterwards.
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT", None)
    monkeypatch.setattr(
        _http,
        "_GLOBAL_CLIENT_FACTORY",
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(hub.handle),
            event_hooks={"request": [_http.hf_request_event_hook]},
            follow_redirects=True,
        ),
    )
    return hub
