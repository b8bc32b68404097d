"""``python launch.py --serve FOLDER [--port N]``: a folder over HTTP on this machine only.

Browsers block ``fetch`` from ``file://`` pages, so the 3D viewer of ``preview.html`` needs the
folder served. This is Python's ``http.server`` (threaded, read-only GET/HEAD) bound to
127.0.0.1, with the MIME types of 3D assets added. Before serving, model-viewer is copied next
to any ``preview.html`` in the folder (or its ``save/``) that lacks it, when it is installed.
Ctrl-C (or SIGTERM) stops the server and the command exits 0.
"""
from __future__ import annotations

import argparse
import errno
import functools
import signal
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, Dict, List, Sequence, Tuple

from threestudio_like.errors import UserInputError
from threestudio_like.preview.assets import INSTALL_HINT, VIEWER_SCRIPT, copy_model_viewer
from threestudio_like.preview.page import PAGE_NAME

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
EXTRA_TYPES = {
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".usdz": "model/vnd.usdz+zip",
    ".obj": "model/obj",
    ".mtl": "model/mtl",
    ".ply": "application/octet-stream",
    ".mp4": "video/mp4",
    ".js": "text/javascript",
}


class AssetRequestHandler(SimpleHTTPRequestHandler):
    """Static files with 3D MIME types; one short log line per request."""

    extensions_map: ClassVar[Dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map, **EXTRA_TYPES}

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"  {self.address_string()} {format % args}\n")


class QuietAssetRequestHandler(AssetRequestHandler):
    """The same, without request logs (tests)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def preview_pages(folder: Path) -> List[Path]:
    """``preview.html`` of the folder itself and of its ``save/`` (a trial folder)."""
    return [p for p in (folder / PAGE_NAME, folder / "save" / PAGE_NAME) if p.is_file()]


def make_server(folder: str, port: int = DEFAULT_PORT, quiet: bool = False) -> ThreadingHTTPServer:
    """An HTTP server for ``folder`` on 127.0.0.1:``port`` (0: any free port), not yet serving."""
    root = Path(folder)
    if not root.is_dir():
        raise UserInputError(f"--serve: {folder} is not a folder; pass the trial's save/ folder or a batch folder.")
    if not 0 <= port <= 65535:
        raise UserInputError(f"--port {port} is not a port number (1-65535, or 0 for any free port).")
    handler = functools.partial(QuietAssetRequestHandler if quiet else AssetRequestHandler,
                                directory=str(root.resolve()))
    try:
        return ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserInputError(f"port {port} is already in use on {HOST}: pass another, e.g. "
                                 f"--port {port + 1} (or --port 0 for any free port).") from None
        raise


def server_url(server: ThreadingHTTPServer) -> str:
    """``http://127.0.0.1:<port>/`` of a server."""
    return f"http://{HOST}:{server.server_address[1]}/"


def serve_in_thread(folder: str, port: int = 0) -> Tuple[ThreadingHTTPServer, str]:
    """A quiet server running in a daemon thread (tests); call ``shutdown()`` and
    ``server_close()`` when done."""
    server = make_server(folder, port, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server_url(server)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the server cleanly, also where SIGINT came in ignored (a command
    started in the background by a script)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)


def serve(folder: str, port: int = DEFAULT_PORT) -> int:
    """Serve ``folder`` until Ctrl-C; prints the address of the folder and of its preview pages."""
    root = Path(folder)
    server = make_server(folder, port)
    url = server_url(server)
    for page in preview_pages(root):
        if not (page.parent / VIEWER_SCRIPT).is_file():
            copied = copy_model_viewer(page.parent)
            print(f"model-viewer copied next to {page}" if copied
                  else f"note: the 3D viewer is not installed ({INSTALL_HINT}); {page} shows turntables and links only")
    print(f"Serving {root.resolve()} at {url} (this machine only; Ctrl-C to stop)")
    for page in preview_pages(root):
        print(f"  preview: {url}{page.relative_to(root).as_posix()}")
    sys.stdout.flush()
    _stop_on_signals()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nStopped.")
    finally:
        server.server_close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py --serve",
        description="Serve a folder (a run's save/, a batch folder) on 127.0.0.1 so that browsers can "
                    "load its 3D models: open the printed preview address. Ctrl-C stops it.")
    parser.add_argument("--serve", metavar="FOLDER", required=True, help="folder to serve")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    return parser


def serve_main(argv: Sequence[str]) -> int:
    """``--serve FOLDER [--port N]`` (``--serve --help``: the options)."""
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return 0
    args = build_parser().parse_args(list(argv))
    try:
        return serve(args.serve, args.port)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code

