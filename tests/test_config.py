"""Config validation: each broken config fails at load with one line naming file, key and reason."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, load_config
from agent.detect.manifest import load_manifest
from agent.rules.object_dwell import Params
from tests.helpers import NANODET_MANIFEST, write_camera, write_edge

NANODET_SHA = load_manifest(NANODET_MANIFEST).sha256


@pytest.fixture
def box(tmp_path):
    cam = write_camera(tmp_path, "cam1", "/nonexistent/clip.mp4")
    return write_edge(tmp_path, [cam]), cam


def test_valid_config_loads_into_typed_objects(box):
    edge, _ = box
    config = load_config(edge)
    cam = config.cameras[0]
    assert cam.id == "cam1" and cam.grid_code == "310101001001" and cam.lat == pytest.approx(31.2304)
    zone = cam.zones[0]
    assert zone.zone.id == "plaza" and zone.zone.polygon.shape == (4, 2)
    assert isinstance(zone.params, Params) and zone.params.classes == frozenset({"person"})
    assert zone.params.min_dwell_s == 2.0


def _replace(path, old, new):
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _wrong_sha_manifest(tmp_path):
    bad = tmp_path / "bad.toml"
    text = NANODET_MANIFEST.read_text()
    text = re.sub(r'sha256 = "[0-9a-f]+"', 'sha256 = "' + "0" * 64 + '"', text)
    text = text.replace('file = "nanodet-g-416.onnx"', f'file = "{NANODET_MANIFEST.parent / "nanodet-g-416.onnx"}"')
    bad.write_text(text)
    return bad


def _truncated_model_manifest(tmp_path):
    onnx = tmp_path / "truncated.onnx"
    data = (NANODET_MANIFEST.parent / "nanodet-g-416.onnx").read_bytes()
    onnx.write_bytes(data[: len(data) // 2])
    import hashlib
    manifest = tmp_path / "truncated.toml"
    text = NANODET_MANIFEST.read_text()
    text = re.sub(r'sha256 = "[0-9a-f]+"', f'sha256 = "{hashlib.sha256(onnx.read_bytes()).hexdigest()}"', text)
    manifest.write_text(text.replace('file = "nanodet-g-416.onnx"', f'file = "{onnx}"'))
    return manifest


# (case, how to break the box, file the error names, expected text of the one line)
BROKEN = [
    ("unknown key in edge.toml", lambda t, e, c: _replace(e, "[agent]\n", "[agent]\nidd = 1\n"),
     "edge.toml", r"agent\.idd: unknown key \(allowed: id, log_format, log_level, timezone\)"),
    ("misspelt rule parameter", lambda t, e, c: _replace(c, "min_dwell_s", "min_dwel_s"),
     "cam1.toml", r"zones\.plaza\.rule\.min_dwel_s: unknown key"),
    ("polygon with two points", lambda t, e, c: _replace(c, "[[0, 250], [768, 250], [768, 576], [0, 576]]",
                                                        "[[0, 250], [768, 250]]"),
     "cam1.toml", r"zones\.plaza\.polygon: needs at least 3 points, got 2"),
    ("unknown rule", lambda t, e, c: _replace(c, 'type = "object_dwell"', 'type = "litter_magic"'),
     "cam1.toml", r"zones\.plaza\.rule\.type: unknown rule 'litter_magic' \(known: .*object_dwell"),
    ("missing manifest", lambda t, e, c: _replace(e, str(NANODET_MANIFEST), str(t / "nope.toml")),
     "edge.toml", r"models\.default\.manifest: file not found: .*nope\.toml"),
    ("missing model file", lambda t, e, c: (
        (t / "m.toml").write_text(NANODET_MANIFEST.read_text()), _replace(e, str(NANODET_MANIFEST), str(t / "m.toml"))),
     "m.toml", r"file: model file not found: .*nanodet-g-416\.onnx"),
    ("model file with wrong sha256", lambda t, e, c: _replace(e, str(NANODET_MANIFEST), str(_wrong_sha_manifest(t))),
     "bad.toml", rf"sha256: nanodet-g-416\.onnx has sha256 {NANODET_SHA}, manifest says 0000.*\(truncated or replaced file\?\)"),
    ("truncated model file", lambda t, e, c: _replace(e, str(NANODET_MANIFEST), str(_truncated_model_manifest(t))),
     "truncated.onnx", r"onnxruntime cannot load the model"),
    ("camera names undefined model", lambda t, e, c: _replace(c, 'model = "default"', 'model = "yolo"'),
     "cam1.toml", r"model: no \[models\.yolo\] in .*edge\.toml \(defined: default\)"),
    ("not TOML", lambda t, e, c: _replace(c, "[location]", "[location"),
     "cam1.toml", r"not valid TOML"),
    ("latitude out of range", lambda t, e, c: _replace(c, "lat = 31.2304", "lat = 131.2"),
     "cam1.toml", r"location\.lat: must be <= 90, got 131\.2"),
    ("wrong type", lambda t, e, c: _replace(c, "analysis_fps = 2.0", 'analysis_fps = "fast"'),
     "cam1.toml", r"analysis_fps: expected a number, got 'fast'"),
    ("missing required table", lambda t, e, c: _replace(c, "[location]\n", "[place]\n"),
     "cam1.toml", r"place: unknown key"),
    ("empty classes", lambda t, e, c: _replace(c, 'classes = ["person"]', "classes = []"),
     "cam1.toml", r"zones\.plaza\.rule: classes: must name at least one class"),
    ("camera file missing", lambda t, e, c: c.unlink(),
     "cam1.toml", r"file not found"),
    ("schedule time not HH:MM", lambda t, e, c: _replace(c, "[zones.plaza.rule]", 'schedule = [{start = "8am", end = "20:00"}]\n\n[zones.plaza.rule]'),
     "cam1.toml", r"zones\.plaza\.schedule\[0\]: start: expected HH:MM, got '8am'"),
    ("schedule with an unknown day", lambda t, e, c: _replace(c, "[zones.plaza.rule]", 'schedule = [{start = "08:00", end = "20:00", days = ["monday"]}]\n\n[zones.plaza.rule]'),
     "cam1.toml", r"days: unknown day 'monday'"),
    ("category for an unknown rule", lambda t, e, c: _replace(e, "[agent]", '[categories.litterr]\nmajor = "a"\nminor = "b"\ncode = "c"\n\n[agent]'),
     "edge.toml", r"categories\.litterr: unknown rule"),
    ("tracker score above 1", lambda t, e, c: _replace(c, "[location]", "[tracker]\nhigh_score = 5.0\n\n[location]"),
     "cam1.toml", r"tracker\.high_score: must be <= 1, got 5\.0"),
    ("tracker negative lost time", lambda t, e, c: _replace(c, "[location]", "[tracker]\nlost_s = -1\n\n[location]"),
     "cam1.toml", r"tracker\.lost_s: must be > 0, got -1"),
    ("tracker low score above high score", lambda t, e, c: _replace(
        c, "[location]", "[tracker]\nlow_score = 0.6\nhigh_score = 0.5\n\n[location]"),
     "cam1.toml", r"tracker: low_score: must be <= high_score \(0\.5\), got 0\.6"),
    ("scene level above 255", lambda t, e, c: _replace(c, "[location]", "[scene]\nforeground_level = 300\n\n[location]"),
     "cam1.toml", r"scene\.foreground_level: must be <= 255, got 300"),
    ("scene absorbs before static", lambda t, e, c: _replace(
        c, "[location]", "[scene]\nmin_static_s = 60\nabsorb_after_s = 30\n\n[location]"),
     "cam1.toml", r"scene: min_static_s: must be < absorb_after_s \(30\), got 60"),
    ("zone crop scale out of range", lambda t, e, c: _replace(c, "[location]", "[zone_crops]\nscale = 0\n\n[location]"),
     "cam1.toml", r"zone_crops\.scale: must be >= 0\.25, got 0"),
    ("frame size not positive", lambda t, e, c: _replace(c, "[location]", "frame_size = [0, 576]\n\n[location]"),
     "cam1.toml", r"frame_size: width and height must be positive, got \[0, 576\]"),
    ("zone outside frame size", lambda t, e, c: _replace(c, "[location]", "frame_size = [640, 272]\n\n[location]"),
     "cam1.toml", r"zones\.plaza\.polygon: zone 'plaza': point \[768, 250\] lies outside frame_size 640x272"),
    ("unknown time zone", lambda t, e, c: _replace(e, "[agent]\n", '[agent]\ntimezone = "Mars/Olympus"\n'),
     "edge.toml", r"agent: timezone: unknown time zone 'Mars/Olympus'"),
    ("unknown datum", lambda t, e, c: _replace(c, "lat = 31.2304", 'datum = "BD-09"\nlat = 31.2304'),
     "cam1.toml", r"location\.datum: must be one of \['WGS-84', 'GCJ-02'\], got 'BD-09'"),
    ("GB/T 28181 code too short", lambda t, e, c: _replace(c, "[location]", '[gb28181]\ndevice_id = "3402"\n\n[location]'),
     "cam1.toml", r"gb28181: device_id: a GB/T 28181 code is 20 digits, got '3402'"),
    ("GCJ-02 camera with a WGS-84 calibration", lambda t, e, c: _gcj02_calibrated(t, c),
     "cam1.toml", r"location\.datum: GCJ-02, but the ground calibration's lat/lon are WGS-84"),
]


def _gcj02_calibrated(tmp_path, camera):
    """A camera file saying GCJ-02 that names a calibration, whose lat/lon are WGS-84 by definition."""
    from agent.calibration import LOCAL_M, GroundPoint, fit, save
    pixels = [(100, 560), (700, 540), (520, 250), (260, 260), (400, 400)]
    ground = [(0, 0), (12, 0), (12, 20), (0, 20), (6, 9)]
    fitted = fit([GroundPoint(p, g) for p, g in zip(pixels, ground)], LOCAL_M, (31.2304, 121.4737), (768, 576))
    save(tmp_path / "cam1.calibration.toml", fitted, 1)
    _replace(camera, "lat = 31.2304", 'datum = "GCJ-02"\nlat = 31.2304')
    _replace(camera, "[location]", 'calibration = "cam1.calibration.toml"\n\n[location]')


def test_datum_and_gb28181_codes_load_from_the_camera_file(box):
    edge, cam = box
    _replace(cam, "lat = 31.2304", 'datum = "GCJ-02"\nlat = 31.2304')
    _replace(cam, "[location]", '[gb28181]\ndevice_id = "34020000001180000001"\n\n[location]')
    camera = load_config(edge).cameras[0]
    assert camera.datum.value == "GCJ-02"
    assert camera.gb28181.as_dict() == {"device_id": "34020000001180000001"}


@pytest.mark.parametrize("case, breaker, names_file, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_check_prints_one_line_error(box, tmp_path, capsys, case, breaker, names_file, expected):
    edge, cam = box
    breaker(tmp_path, edge, cam)
    code = main(["-c", str(edge), "check"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err, f"error spans lines: {err}"
    assert err.startswith("edge-agent: config error: ")
    assert names_file in err, err
    assert re.search(expected, err), err


def test_console_script_check_on_bundled_config():
    """The installed console script validates the repository's own edge.toml and says what would run."""
    exe = Path(sys.executable).parent / "edge-agent"
    out = subprocess.run([exe, "check"], capture_output=True, text=True, cwd=NANODET_MANIFEST.parent.parent,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "model default: nanodet-g-416-int8.onnx" in out.stdout and ", int8" in out.stdout
    assert "zone keep_clear: 4 points, rule object_dwell" in out.stdout


def test_configuration_reference_page_is_current():
    """docs/configuration-reference.md is generated from the config dataclasses; it must match them."""
    out = subprocess.run([sys.executable, "tools/config_reference.py", "--check"], capture_output=True, text=True,
                         cwd=NANODET_MANIFEST.parent.parent, timeout=60)
    assert out.returncode == 0, out.stderr


def test_check_names_the_dwell_defaults_a_zone_relies_on(box, capsys):
    """The object_dwell zone of the test camera sets min_dwell_s and clear_after_s itself, so
    check assumes nothing for it; with both keys taken out it says which defaults it runs on."""
    edge, cam = box
    assert main(["-c", str(edge), "check"]) == 0
    assert "assumes the defaults" not in capsys.readouterr().out
    text = cam.read_text()
    cam.write_text(re.sub(r"(?m)^(min_dwell_s|clear_after_s) = .*\n", "", text))
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "assumes the defaults min_dwell_s=5.0, clear_after_s=10.0" in out, out


# --- [mqtt] transport security ----------------------------------------------------------------

def _mqtt_box(tmp_path, lines: str = "", host: str = "127.0.0.1"):
    cam = write_camera(tmp_path, "cam1", "/nonexistent/clip.mp4")
    edge = write_edge(tmp_path, [cam], mqtt_port=1883, mqtt_extra=lines, command_key=False)
    _replace(edge, 'host = "127.0.0.1"', f'host = "{host}"')
    return edge


def _secret(tmp_path, name: str, text: str = "pw-1234\n", mode: int = 0o600):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


MQTT_BROKEN = [
    ("password in TOML", "127.0.0.1", 'username = "box"\npassword = "S3cret"\n',
     r"edge\.toml: mqtt\.password: a password does not belong in a TOML file .*password_file.*password_env"),
    ("plain MQTT to a remote broker", "broker.city.example", "",
     r"mqtt: plain MQTT to 'broker\.city\.example' .*set tls = true .*tls_insecure = true"),
    ("TLS file without tls", "127.0.0.1", 'tls_ca = "ca.pem"\n', r"mqtt: tls_ca: needs tls = true"),
    ("client certificate without key", "127.0.0.1", 'tls = true\ntls_cert = "c.pem"\n',
     r"mqtt: tls_cert and tls_key: give both"),
    ("two password sources", "127.0.0.1", 'username = "box"\npassword_file = "pw"\npassword_env = "PW"\n',
     r"mqtt: password_file and password_env: give one"),
    ("password without username", "127.0.0.1", 'password_env = "PW"\n', r"mqtt: username: a password needs a username"),
    ("password file missing", "127.0.0.1", 'username = "box"\npassword_file = "nope.pw"\n',
     r"mqtt\.password_file: cannot read .*nope\.pw: No such file"),
    ("password variable unset", "127.0.0.1", 'username = "box"\npassword_env = "EDGE_TEST_UNSET_PW"\n',
     r"mqtt\.password_env: environment variable EDGE_TEST_UNSET_PW is not set"),
    ("CA file missing", "127.0.0.1", 'tls = true\ntls_ca = "nope-ca.pem"\n', r"mqtt\.tls_ca: cannot read .*nope-ca\.pem"),
]


@pytest.mark.parametrize("case, host, lines, expected", MQTT_BROKEN, ids=[b[0] for b in MQTT_BROKEN])
def test_mqtt_security_mistakes_fail_at_load(tmp_path, capsys, monkeypatch, case, host, lines, expected):
    monkeypatch.delenv("EDGE_TEST_UNSET_PW", raising=False)
    edge = _mqtt_box(tmp_path, lines, host)
    assert main(["-c", str(edge), "check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(expected, err), err
    assert "S3cret" not in err


def test_empty_password_file_is_refused(tmp_path):
    _secret(tmp_path, "pw", "\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*pw is empty"):
        load_config(_mqtt_box(tmp_path, 'username = "box"\npassword_file = "pw"\n'))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "::1"])
def test_plain_mqtt_to_a_loopback_broker_is_fine(tmp_path, capsys, host):
    edge = _mqtt_box(tmp_path, host=host)
    assert load_config(edge).mqtt.insecure() is None
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert f"mqtt: {host}:1883 prefix cityops, plain MQTT to a loopback broker" in out and "WARNING" not in out


def test_tls_to_a_remote_broker_and_the_insecure_flag_as_check_shows_them(tmp_path, capsys):
    edge = _mqtt_box(tmp_path, "tls = true\n", host="broker.city.example")
    assert main(["-c", str(edge), "check"]) == 0
    assert "prefix cityops, TLS verified against the system CAs" in capsys.readouterr().out
    _replace(edge, "tls = true\n", "tls = true\ntls_insecure = true\n")
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "INSECURE: TLS without verifying the broker's certificate" in out
    assert "  WARNING: TLS without verifying" in out
    _replace(edge, "tls = true\n", "")
    assert main(["-c", str(edge), "check"]) == 0
    assert "INSECURE: plain MQTT to broker.city.example" in capsys.readouterr().out


def test_secrets_are_read_from_files_relative_to_edge_toml_or_the_environment(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    _secret(tmp_path / "secrets", "mqtt.pw", "pw-from-file\nignored second line\n")
    ca = _secret(tmp_path / "secrets", "ca.pem", "not parsed at load\n", 0o644)
    config = load_config(_mqtt_box(tmp_path, 'tls = true\ntls_ca = "secrets/ca.pem"\nusername = "box"\n'
                                             'password_file = "secrets/mqtt.pw"\n'))
    assert config.mqtt.tls_ca == ca and config.mqtt_password == "pw-from-file"
    assert "pw-from-file" not in repr(config)
    monkeypatch.setenv("EDGE_TEST_PW", "pw-from-env")
    config = load_config(_mqtt_box(tmp_path, 'username = "box"\npassword_env = "EDGE_TEST_PW"\n'))
    assert config.mqtt_password == "pw-from-env" and config.secret_files() == []


def test_check_warns_on_world_readable_secret_files(tmp_path, capsys):
    pw = _secret(tmp_path, "mqtt.pw", mode=0o644)
    key = _secret(tmp_path, "client.key", "key\n", 0o600)
    _secret(tmp_path, "client.pem", "cert\n", 0o644)  # a certificate is public: no warning
    edge = _mqtt_box(tmp_path, 'tls = true\ntls_cert = "client.pem"\ntls_key = "client.key"\n'
                               'username = "box"\npassword_file = "mqtt.pw"\n')
    assert load_config(edge).secret_files() == [("mqtt.password_file", pw), ("mqtt.tls_key", key)]
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert f"warning: mqtt.password_file {pw} is readable by other users (mode 0644); chmod 600 it" in out
    warnings = [line for line in out.splitlines() if "readable by other users" in line]
    assert len(warnings) == 1 and "mqtt.tls_key" not in out
    pw.chmod(0o600)
    key.chmod(0o604)
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "mqtt.password_file" not in out and "warning: mqtt.tls_key" in out


def test_check_warns_on_a_world_readable_camera_file_with_a_password_in_its_url(tmp_path, capsys):
    cam = write_camera(tmp_path, "cam1", "rtsp://admin:S3cret@10.0.0.7/h264")
    cam.chmod(0o644)
    assert main(["-c", str(write_edge(tmp_path, [cam])), "check"]) == 0
    assert f"warning: camera cam1 (its url holds a password) {cam} is readable by other users" in capsys.readouterr().out


def test_a_camera_password_comes_from_a_file_or_the_environment_into_the_url(tmp_path, monkeypatch, capsys):
    pw = _secret(tmp_path, "cam1.pw", "S3cret/@:x\n")  # characters a URL must quote
    cam = write_camera(tmp_path, "cam1", "rtsp://admin@10.0.0.7:554/h264")
    cam.write_text(cam.read_text().replace('url = ', 'password_file = "cam1.pw"\nurl = ', 1))
    edge = write_edge(tmp_path, [cam])
    config = load_config(edge)
    camera = config.camera("cam1")
    assert camera.url == "rtsp://admin:S3cret%2F%40%3Ax@10.0.0.7:554/h264"
    assert "S3cret" not in repr(camera) and ("camera cam1 password_file", pw) in config.secret_files()
    assert main(["-c", str(edge), "check"]) == 0
    out = capsys.readouterr().out
    assert "S3cret" not in out and "camera cam1: rtsp://admin:***@10.0.0.7:554/h264" in out
    assert "holds the camera's password" not in out

    monkeypatch.setenv("EDGE_TEST_CAM_PW", "from-env-42")
    cam.write_text(cam.read_text().replace('password_file = "cam1.pw"', 'password_env = "EDGE_TEST_CAM_PW"'))
    assert load_config(edge).camera("cam1").url == "rtsp://admin:from-env-42@10.0.0.7:554/h264"


@pytest.mark.parametrize("url, lines, message", [
    ("rtsp://10.0.0.7/h264", 'password_env = "HOME"', "url: a camera password needs a url with a user"),
    ("rtsp://admin:Pw0ld93@10.0.0.7/h264", 'password_env = "HOME"', "url: holds a password as well as"),
    ("rtsp://admin@10.0.0.7/h264", 'password_env = "EDGE_TEST_UNSET_93"', "password_env: environment variable"),
    ("rtsp://admin@10.0.0.7/h264", 'password_file = "missing.pw"', "password_file: cannot read"),
    ("rtsp://admin@10.0.0.7/h264", 'password_env = "HOME"\npassword_file = "x.pw"', "give one of them"),
])
def test_camera_password_mistakes_name_the_key(tmp_path, url, lines, message):
    cam = write_camera(tmp_path, "cam1", url)
    cam.write_text(cam.read_text().replace('url = ', f'{lines}\nurl = ', 1))
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_config(write_edge(tmp_path, [cam]))
    assert str(cam) in str(err.value) and "Pw0ld93" not in str(err.value)


def test_check_asks_to_move_a_camera_password_out_of_the_url(tmp_path, capsys):
    cam = write_camera(tmp_path, "cam1", "rtsp://admin:S3cret@10.0.0.7/h264")
    cam.chmod(0o600)
    assert main(["-c", str(write_edge(tmp_path, [cam])), "check"]) == 0
    out = capsys.readouterr().out
    assert "warning: its url holds the camera's password: move it to password_file or password_env" in out
    assert "S3cret" not in out


def test_importing_the_config_loads_neither_opencv_nor_onnxruntime_nor_pyav():
    """Tools and tests that only read a config (edge-agent check's first half, config_reference,
    the platform's helpers) must not pay for loading the analysis libraries; a fresh interpreter,
    since this one has them loaded already."""
    probe = ("import sys, agent.config; "
             "print(' '.join(m for m in ('cv2', 'onnxruntime', 'av') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == [], f"import agent.config loaded {out.stdout.strip()}"
