"""``fiun-hub serve``: serve the hub over HTTP to the unmodified ``huggingface_hub`` client (docs/serve.md).

A standalone click command over :mod:`fiun_hub.serve`; ``cli/main.py`` registers it with ``main.add_command(serve)``.
Like ``cli/compliance.py`` it uses the CLI's context object (``Ctx``: the hub from ``--hub``, ``--json``, ``emit``)
and error handling (one line on stderr, exit 2 on bad input) from ``cli/common.py``, and imports nothing from
``main``.
"""
from __future__ import annotations


import click

from .common import fail, handled  # the CLI's error handling

DEFAULT_MAX_UPLOAD_MB = 4096  # fiun_hub.serve.DEFAULT_MAX_UPLOAD_MB (not imported here: starlette may be missing)
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 10.0, 60.0  # fiun_hub.serve.HEADER_TIMEOUT_S, BODY_TIMEOUT_S (likewise)



@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Only loopback addresses unless --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: any free port; the URL is printed).")
@click.option("--token", envvar="FIUN_HUB_TOKEN", show_envvar=True, metavar="T",
              help="Bearer token that writes need (and reads, with --private). Without one the server is read-only.")
@click.option("--private", is_flag=True, help="Reads need the token too (default: reads are open).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_UPLOAD_MB,
              show_default=True, help="Largest file (and request body) accepted, in MiB; larger uploads get 413.")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=HEADER_TIMEOUT_S,
              show_default=True, metavar="S",
              help="Close a connection that has not sent a whole request head (line and headers) within S seconds.")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=BODY_TIMEOUT_S,
              show_default=True, metavar="S",
              help="Answer 408 and close when a request body pauses for more than S seconds.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host that other machines can reach (there is no TLS: put a proxy in front).")
@click.pass_obj
@handled
def serve(c, host: str, port: int, token: str | None, private: bool, max_upload_mb: float, header_timeout: float,
          body_timeout: float, allow_remote: bool) -> None:
    """Serve the hub as a Hugging Face Hub-compatible HTTP endpoint.

    The unmodified huggingface_hub client (HfApi, hf_hub_download, snapshot_download, upload_folder, timm's
    hf-hub: models) can then read and write it: point it at the printed URL with HF_ENDPOINT and set
    HF_HUB_DISABLE_XET=1. Every write lands through the hub's all-or-nothing publish, and the lineage index stays
    current. Model repos only; no Xet, pull requests, branches other than main, datasets or spaces.
    """
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn")):
        fail("fiun-hub serve needs starlette and uvicorn: pip install 'fiun-hub[serve]'")
    from fiun_hub.errors import BadInput
    from fiun_hub.serve import check_host, run

    check_host(host, allow_remote)
    token = token or None
    if private and not token:
        raise BadInput("--private needs a token: pass --token T or set FIUN_HUB_TOKEN")
    hub = c.hub()

    def ready(url: str) -> None:
        env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1"}
        info = {"url": url, "hub": str(hub.root), "reads": "token" if private else "open",
                "writes": "token" if token else "disabled (no --token)", "max_upload_mb": max_upload_mb,
                "env": env}
        lines = [
            f"fiun-hub serve: {hub.root} at {url}",
            f"  reads {'need the token' if private else 'are open'}; "
            + ("writes need the token" if token else "writes are disabled (read-only: no --token)")
            + f"; uploads up to {max_upload_mb:g} MiB",
            "  point a client at it:",
            f"    export HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1" + (" HF_TOKEN=<the token>" if token else ""),
            f"    or: HfApi(endpoint=\"{url}\", token=...)   (still with HF_HUB_DISABLE_XET=1)",
            "  Ctrl-C stops it.",
        ]
        if not private and allow_remote:
            lines.insert(2, "  warning: reads are open to every machine that can reach this address")
        c.emit(info, "\n".join(lines))
        import sys

        sys.stdout.flush()

    run(hub, host=host, port=port, token=token, open_reads=not private,
        max_upload_bytes=int(max_upload_mb * (1 << 20)), allow_remote=allow_remote, ready=ready,
        header_timeout=header_timeout, body_timeout=body_timeout)


__all__ = ["serve"]
