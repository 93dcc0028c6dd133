"""Fetching a remote video or still (`malmm serve --allow-remote`): an http(s) URL downloaded into
the server's private folder, within a size and a time limit, and never from an address of this
machine or its network.

Every hop (the URL, then each redirect, at most `redirects`) is checked the same way: its scheme is
http or https, its host resolves (socket.getaddrinfo, here) to addresses that are ALL public, and
the connection then goes to the address that was checked: the URL is rewritten to that IP and the
host name travels as the Host header and, for https, as the TLS server name (httpx's `sni_hostname`
request extension), so the certificate is still verified against the host name. A second DNS
answer (DNS rebinding) therefore cannot send the request elsewhere after the check, and no proxy
from the environment is used (it would do its own resolving). This was chosen over a custom httpx
transport because it needs no private names of httpx or httpcore, only their documented request
options.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from malmm_cli.jobs.server.chat import ApiError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = {301, 302, 303, 307, 308}


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, as the system's resolver gives them."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


def is_public(address: Address) -> bool:
    """Whether `address` is on the public internet: not private, loopback, link-local, multicast,
    reserved or unspecified (an IPv4 address inside IPv6, ::ffff:10.0.0.1, is judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified
    )  # fmt: skip


@dataclass(frozen=True)
class Fetched:
    """A downloaded file in the private folder: its content type (as the server said) and size."""

    path: Path
    content_type: str
    size: int


@dataclass(frozen=True)
class RemoteFetcher:
    """How remote URLs are fetched: the largest file (bytes, counted as they arrive), the time the
    whole download may take and the time to connect (s), how many redirects are followed, and the
    resolver and address check. The last two are parameters so that a test can let its own server
    on loopback count as public; the server itself always uses the defaults."""

    max_bytes: int = 2048 * 1024 * 1024
    timeout: float = 300.0
    connect_timeout: float = 10.0
    redirects: int = 5
    resolve: Callable[[str, int], list[str]] = field(default=resolve_host, repr=False)
    public: Callable[[Address], bool] = field(default=is_public, repr=False)

    def fetch(self, url: str, folder: Path, suffix: Callable[[str, str], str]) -> Fetched:
        """Download `url` into `folder` (a new file of mode 0600), following redirects by hand;
        `suffix(content_type, path)` names the file's extension. ApiError says why not; a partial
        file is removed."""
        import httpx

        deadline = time.monotonic() + self.timeout
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            for _ in range(self.redirects + 1):
                request = self._request(client, url, deadline)
                try:
                    response = client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise self._timed_out() from None
                except httpx.HTTPError as error:
                    raise failed(f"{url}: {network_words(error)}") from None
                try:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise failed(f"{url}: the server answered HTTP {response.status_code} "
                                     f"{response.reason_phrase}".rstrip())  # fmt: skip
                    return self._save(response, folder, suffix, url, deadline)
                finally:
                    response.close()
        raise failed(f"more than {self.redirects} redirects: the last went to {url}")

    def _request(self, client: object, url: str, deadline: float) -> object:
        """The request for one hop, to the checked address of its host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ApiError(f"only http and https URLs are fetched, not {parts.scheme or 'none'}:// ({url})",
                           param="messages", code="remote_url_refused")  # fmt: skip
        host = parts.hostname
        if not host:
            raise ApiError(f"no host in {url}", param="messages", code="remote_url_refused")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ApiError(f"a bad port in {url}", param="messages", code="remote_url_refused") from None
        address = self._checked(host, port)
        literal = f"[{address}]" if address.version == 6 else str(address)
        target = parts._replace(netloc=f"{literal}:{port}").geturl()
        shown_host = f"[{host}]" if ":" in host else host
        headers = {
            "Host": shown_host if parts.port is None else f"{shown_host}:{parts.port}",
            "Accept": "*/*",
            "Accept-Encoding": "identity",
        }  # the bytes as stored: the file is saved raw
        remaining = max(0.001, deadline - time.monotonic())
        import httpx

        timeout = httpx.Timeout(remaining, connect=min(self.connect_timeout, remaining))
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return client.build_request("GET", target, headers=headers, timeout=timeout, extensions=extensions)

    def _checked(self, host: str, port: int) -> Address:
        """The address to connect to for `host`: the first it resolves to, once every one of them
        is public (one private answer refuses the host: which one is used is the resolver's choice)."""
        try:
            found = [ipaddress.ip_address(text.split("%")[0]) for text in self.resolve(host, port)]
        except (OSError, UnicodeError) as error:
            raise failed(f"cannot resolve {host}: {getattr(error, 'strerror', None) or error}") from None
        if not found:
            raise failed(f"cannot resolve {host}: no address")
        for address in found:
            if not self.public(address):
                raise ApiError(
                    f"{host} resolves to {address}, an address of this machine or a private network: "
                    "this server fetches only from public addresses",
                    param="messages", code="private_address",
                )  # fmt: skip
        return found[0]

    def _save(self, response: object, folder: Path, suffix: Callable[[str, str], str], url: str,
              deadline: float) -> Fetched:  # fmt: skip
        """The response's body in a new private file, counted and timed as it arrives."""
        import httpx

        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(f"{url} is {int(declared)} bytes")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        path = folder / f"{uuid.uuid4().hex}{suffix(content_type, urlsplit(url).path)}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # only this user reads it
        size = 0
        try:
            with os.fdopen(descriptor, "wb") as file:
                for part in response.iter_raw():  # each read as it arrives: counted and timed at once
                    size += len(part)
                    if size > self.max_bytes:
                        raise self._too_large(f"{url} sent more than {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise self._timed_out()
                    file.write(part)
        except httpx.TimeoutException:
            path.unlink(missing_ok=True)
            raise self._timed_out() from None
        except httpx.HTTPError as error:
            path.unlink(missing_ok=True)
            raise failed(f"{url}: {network_words(error)}") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size == 0:
            path.unlink(missing_ok=True)
            raise failed(f"{url}: the server sent no bytes")
        return Fetched(path, content_type, size)

    def _too_large(self, what: str) -> ApiError:
        return ApiError(f"{what}: more than this server fetches ({self.max_bytes} bytes, --remote-max-mb)",
                        param="messages", code="remote_too_large")  # fmt: skip

    def _timed_out(self) -> ApiError:
        return failed(f"the download took longer than {self.timeout:g} s (--remote-timeout)")


def failed(message: str) -> ApiError:
    return ApiError(f"cannot fetch the video: {message}", param="messages", code="remote_fetch_failed")


def network_words(error: Exception) -> str:
    """A network error in words: its kind (connection refused, ...) without a traceback."""
    said = str(error).strip().splitlines()
    name = {"ConnectError": "cannot connect", "RemoteProtocolError": "the server broke the protocol",
            "ReadError": "the connection broke", "TooManyRedirects": "too many redirects"}.get(
        type(error).__name__, type(error).__name__)  # fmt: skip
    return f"{name} ({said[0]})" if said and said[0] else name
