"""Thin HTTP client for one SGLang server; classifies failures as retryable or not.

``ServerUnavailable``: connection refused/reset, timeout, or HTTP 5xx: the server is dead, hung or
crashed (retry after recovery). ``RequestRejected``: HTTP 4xx: the request itself is wrong (no retry).
"""

from __future__ import annotations

from typing import Any

import requests


class ServerUnavailable(RuntimeError):
    """The server did not answer (dead, hung past the timeout, or an internal error)."""


class RequestRejected(ValueError):
    """The server rejected the request (HTTP 4xx); the message carries its reason."""


class WeightUpdateFailed(RuntimeError):
    """The server answered a weight update with ``success: false`` (it still serves the old weights)."""


class SGLangClient:
    """POST/GET helpers with a per-request timeout against ``url`` (``http://host:port``)."""

    def __init__(self, url: str, timeout_s: float, api_key: str = ""):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.traffic = {"requests": 0, "bytes_sent": 0, "bytes_received": 0}
        """POST requests answered and their body sizes (HTTP payload bytes, headers excluded)."""
        if api_key:  # SGLang --api-key: every endpoint but /health needs it
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never shows the session headers (the API key)
        return f"SGLangClient({self.url!r})"

    def post(self, path: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        try:
            resp = self.session.post(self.url + path, json=body, timeout=timeout_s or self.timeout_s)
        except requests.Timeout as exc:
            raise ServerUnavailable(f"{self.url}{path}: no answer within {timeout_s or self.timeout_s:.0f} s (hung?)") from exc
        except requests.RequestException as exc:
            raise ServerUnavailable(f"{self.url}{path}: {type(exc).__name__}: {exc}") from exc
        self.traffic["requests"] += 1
        self.traffic["bytes_sent"] += len(resp.request.body or b"")
        self.traffic["bytes_received"] += len(resp.content)
        if resp.status_code >= 500:
            raise ServerUnavailable(f"{self.url}{path}: HTTP {resp.status_code}: {resp.text[:500]}")
        if resp.status_code >= 400:
            raise RequestRejected(f"{self.url}{path}: HTTP {resp.status_code}: {resp.text[:1000]}")
        return resp.json()

    def healthy(self, timeout_s: float = 5.0) -> bool:
        """True when /health answers 200 within ``timeout_s``."""
        try:
            return self.session.get(self.url + "/health", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def generate(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.post("/generate", body)
        return out if isinstance(out, list) else [out]

    def flush_cache(self) -> None:
        try:
            self.session.post(self.url + "/flush_cache", timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ServerUnavailable(f"{self.url}/flush_cache: {exc}") from exc

    def update_weights_from_disk(self, model_path: str, version: int) -> None:
        out = self.post("/update_weights_from_disk", {"model_path": model_path, "weight_version": str(version)})
        if not out.get("success", False):
            raise WeightUpdateFailed(f"{self.url}: update_weights_from_disk({model_path}) failed: {out.get('message')}")

    def update_weights_from_tensor(self, serialized: str, version: int) -> None:
        self.post("/begin_weight_update", {})
        try:
            out = self.post("/update_weights_from_tensor", {
                "serialized_named_tensors": [serialized], "flush_cache": True, "weight_version": str(version),
            })
        finally:
            self.post("/end_weight_update", {})
        if not out.get("success", False):
            raise WeightUpdateFailed(f"{self.url}: update_weights_from_tensor failed: {out.get('message')}")
