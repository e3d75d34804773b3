"""The agentic-fast command line: check-config output and exit codes, demo pass-through."""

from __future__ import annotations

import runpy
import sys
import types

import pytest
import yaml

from agentic_fast import __version__
from agentic_fast.cli.commands import main
from agentic_fast.core.config import Config

SECRET = "twilio-auth-token-9876"


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("server:\n  port: 9000\ntwilio:\n  auth_token: ${TWILIO_AUTH_TOKEN:}\n")
    return path


def test_check_config_prints_masked_effective_config(config_file, capsys):
    env = {"TWILIO_AUTH_TOKEN": SECRET}
    assert main(["check-config", "--config", str(config_file)], env=env) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert out.startswith(f"# effective config from {config_file}")
    printed = yaml.safe_load(out)
    assert printed == Config.load(config_file, env=env).masked()
    assert printed["server"]["port"] == 9000
    assert printed["twilio"]["auth_token"] == "****9876"


def test_check_config_warns_about_missing_settings_on_stderr(config_file, capsys):
    assert main(["check-config", "--config", str(config_file)], env={}) == 0
    err = capsys.readouterr().err
    assert "warning: server.public_url is not set" in err


def test_check_config_warns_when_no_inbound_caller_would_be_answered(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("calls:\n  inbound: allowlist\n")
    assert main(["check-config", "--config", str(path)], env={}) == 0
    err = capsys.readouterr().err
    assert "warning: calls.inbound_numbers is empty" in err
    assert "no inbound caller will be answered" in err
    path.write_text("calls:\n  inbound: open\n")
    assert main(["check-config", "--config", str(path)], env={}) == 0
    assert "calls.inbound_numbers" not in capsys.readouterr().err


def test_check_config_error_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 8080\n  prot: 80\n")
    assert main(["check-config", "--config", str(path)], env={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}:3: server.prot: unknown key")


def test_check_config_missing_variable(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("twilio:\n  auth_token: ${TWILIO_AUTH_TOKEN}\n")
    assert main(["check-config", "--config", str(path)], env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:2: twilio.auth_token: ")
    assert "TWILIO_AUTH_TOKEN" in err


def test_check_config_invalid_yaml(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n port: 1\n  host: x\n")
    assert main(["check-config", "--config", str(path)], env={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {path}:3: invalid YAML")


def test_check_config_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.yaml"
    assert main(["check-config", "--config", str(path)], env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: cannot read config file")
    assert err.count("\n") == 1


def test_config_path_from_env_and_flag_overrides_env(tmp_path, config_file, capsys):
    other = tmp_path / "other.yaml"
    other.write_text("server:\n  port: 9100\n")
    env = {"AGENTIC_FAST_CONFIG": str(other)}
    assert main(["check-config"], env=env) == 0
    assert yaml.safe_load(capsys.readouterr().out)["server"]["port"] == 9100
    assert main(["check-config", "--config", str(config_file)], env=env) == 0
    assert yaml.safe_load(capsys.readouterr().out)["server"]["port"] == 9000


def test_default_config_path_is_cwd_config_yaml(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.yaml").write_text("server:\n  port: 9200\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check-config"], env={}) == 0
    assert yaml.safe_load(capsys.readouterr().out)["server"]["port"] == 9200


def test_no_command_is_a_usage_error(capsys):
    assert main([], env={}) == 2
    assert "command is required" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(config_file, capsys):
    assert main(["check-config", "--config", str(config_file), "--bogus"], env={}) == 2
    assert "--bogus" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"], env={}) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_version_and_help_exit_0(capsys):
    assert main(["--version"], env={}) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"], env={}) == 0
    assert "check-config" in capsys.readouterr().out


def test_demo_passes_its_arguments_through(monkeypatch):
    seen = []

    def fake_main(argv):
        seen.append(argv)
        return 3

    fake = types.ModuleType("agentic_fast.audio.demo")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agentic_fast.audio.demo", fake)
    assert main(["demo", "--audio", "--seconds", "2", "--help", "in.wav"], env={}) == 3
    assert seen == [["--seconds", "2", "--help", "in.wav"]]


def test_demo_exit_status_is_returned_not_raised(monkeypatch):
    def fake_main(argv):
        raise SystemExit(0)  # what argparse does on --help

    fake = types.ModuleType("agentic_fast.audio.demo")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agentic_fast.audio.demo", fake)
    assert main(["demo", "--audio", "--help"], env={}) == 0


def test_demo_without_audio_is_the_call_demo(monkeypatch):
    seen = []

    def fake_main(argv):
        seen.append(argv)
        return 1

    fake = types.ModuleType("agentic_fast.demo.run")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agentic_fast.demo.run", fake)
    assert main(["demo", "--timeout", "5"], env={}) == 1
    assert seen == [["--timeout", "5"]]


def test_demo_audio_runs_the_audio_path_demo(capsys):
    assert main(["demo", "--audio", "--seconds", "0.5"], env={}) == 0
    out = capsys.readouterr().out
    assert "implementation" in out and "back to the caller" in out


def test_python_dash_m_runs_main(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["agentic_fast", "--version"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("agentic_fast", run_name="__main__")
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_check_config_warns_about_a_deprecated_model_naming_the_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("openai_realtime:\n  model: gpt-realtime\n")
    assert main(["check-config", "--config", str(path)], env={}) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "gpt-realtime" in x)
    assert line.startswith("warning: openai_realtime.model: gpt-realtime is deprecated and "
                           "shuts down on 2027-01-20")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_http_public_url_fails_check_config_and_serve_with_one_line(tmp_path, capsys, command):
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  public_url: http://agent.example.com\n")
    assert main([command, "--config", str(path)], env={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}:2: server.public_url: must be an https:// URL")
    assert "wss://" in lines[0]


@pytest.mark.parametrize("server", ["host: 0.0.0.0", "trusted_proxies: [127.0.0.1]"])
def test_check_config_refuses_an_exposed_api_without_token(tmp_path, capsys, server):
    path = tmp_path / "exposed.yaml"
    path.write_text(f"server:\n  {server}\n")
    assert main(["check-config", "--config", str(path)], env={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: server.api_token is not set") and err.count("\n") == 1
    path.write_text(f"server:\n  {server}\n  api_token: t0ken-for-the-api\n")
    assert main(["check-config", "--config", str(path)], env={}) == 0


def test_bench_finds_the_load_generator_in_the_checkout(capsys):
    """`agentic-fast bench --help` runs bench.loadgen from the source checkout."""
    assert main(["bench", "--help"], env={}) == 0
    assert "--baseline-relay" in capsys.readouterr().out
