"""The `colab` CLI wrapper against the fake CLI, and SSH through `colab ssh --proxy-mode`."""

from __future__ import annotations

import time

import pytest

from orchestrator.errors import CapacityError, LostError, PrecheckError, TransientError
from orchestrator.platforms.colab.cli import ColabCLI, parse_sessions, parse_usage, proxy_error_class
from orchestrator.platforms.ssh.connection import connect


@pytest.fixture
def cli(colab) -> ColabCLI:
    return ColabCLI(colab.executable, platform="colab", timeout_s=5, new_timeout_s=5)


def _via_colab(endpoint, cli: ColabCLI, sshd, session: str):
    return endpoint(
        host="colab-runtime",
        host_key_name=f"colab-{session}",
        pinned=(f"{sshd.host_key.key_type} {sshd.host_key.base64}",),
        proxy=tuple(cli.proxy_argv(session, sshd.client_key.private)),
        proxy_errors=proxy_error_class,
    )


def test_new_sessions_stop_round_trip_through_the_cli_output(cli, colab):
    cli.new("orch-a1", "T4")
    cli.new("orch-b1", "l4")
    assert [(s.name, s.hardware, s.variant) for s in cli.sessions()] == [
        ("orch-a1", "T4", "GPU"),
        ("orch-b1", "L4", "GPU"),
    ]
    cli.stop("orch-a1")
    cli.stop("orch-a1")  # already gone: still fine
    assert [s.name for s in cli.sessions()] == ["orch-b1"]
    assert ["stop", "-s", "orch-a1"] in colab.calls("stop")


def test_unknown_gpu_name_silently_becomes_an_a100_as_the_real_cli_does(cli):
    cli.new("orch-x", "T5")
    assert cli.sessions()[0].hardware == "A100"


def test_reusing_a_name_orphans_the_first_runtime(cli):
    cli.new("orch-dup", "T4")
    cli.new("orch-dup", "T4")
    names = sorted(s.name for s in cli.sessions())
    assert names == ["?", "orch-dup"]


def test_accelerator_without_entitlement_is_a_capacity_error(cli, colab):
    colab.update(eligible=["T4"])
    with pytest.raises(CapacityError, match="rejected accelerator"):
        cli.new("orch-h", "H100")


def test_usage_reports_the_compute_unit_balance(cli, colab):
    colab.update(balance=42.5)
    cli.new("orch-u", "T4")
    usage = cli.usage()
    assert (usage.balance, usage.rate_per_hour, usage.assignments) == (42.5, 1.96, 1)


def test_usage_on_a_cli_without_the_verb_is_no_reading(cli, colab):
    colab.fault("usage", kind="exit", code=2, message="No such command 'usage'.")
    assert cli.usage() is None


def test_a_hanging_cli_is_killed_at_its_deadline(colab):
    cli = ColabCLI(colab.executable, timeout_s=1)
    colab.fault("sessions", kind="hang")
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not finish"):
        cli.sessions()
    assert time.monotonic() - started < 4


def test_missing_cli_says_how_to_install_it(tmp_path):
    with pytest.raises(PrecheckError, match="pipx install google-colab-cli"):
        ColabCLI(tmp_path / "nowhere" / "colab").sessions()


def test_parsers_ignore_banners_and_read_the_older_sessions_format():
    text = (
        "A new version of colab-cli is available: 0.8.0\n"
        "[0] Endpoint: gpu-t4-s-abc | Variant: GPU | Hardware: T4\n"
        "[1] Endpoint: m-s-def | Variant: DEFAULT | Hardware: NONE\n"
        "\n[colab] Local session names:\n  orch-o1-1 -> gpu-t4-s-abc\n"
    )
    assert [(s.name, s.endpoint, s.hardware) for s in parse_sessions(text)] == [
        ("orch-o1-1", "gpu-t4-s-abc", "T4"),
        ("?", "m-s-def", "CPU"),
    ]
    assert parse_sessions("[colab] No active sessions found on server.\n") == []
    assert parse_usage("Current balance: 1,298.50 compute units\nUsage rate: 0.07/hr\n").balance == 1298.5


def test_ssh_through_colab_proxy_mode_reaches_the_runtime(endpoint, cli, sshd):
    cli.new("orch-s1", "T4")
    conn = connect(_via_colab(endpoint, cli, sshd, "orch-s1"))
    try:
        assert conn.run("echo via-colab").out == "via-colab\n"
    finally:
        conn.close()


def test_a_second_ssh_connection_to_one_runtime_is_refused_with_429(endpoint, cli, sshd):
    cli.new("orch-s2", "T4")
    first = connect(_via_colab(endpoint, cli, sshd, "orch-s2"))
    try:
        with pytest.raises(TransientError, match="HTTP 429"):
            connect(_via_colab(endpoint, cli, sshd, "orch-s2"))
    finally:
        first.close()
    connect(_via_colab(endpoint, cli, sshd, "orch-s2")).close()  # free again once closed


def test_runtime_without_ssh_is_lost_and_sshd_down_is_transient(endpoint, cli, colab, sshd):
    colab.update(ssh_in_new_runtimes=False)
    cli.new("orch-s3", "T4")
    with pytest.raises(LostError, match="HTTP 404"):
        connect(_via_colab(endpoint, cli, sshd, "orch-s3"))
    colab.update(ssh_in_new_runtimes=True, sshd_down=True)
    cli.new("orch-s4", "T4")
    with pytest.raises(TransientError, match="HTTP 502"):
        connect(_via_colab(endpoint, cli, sshd, "orch-s4"))


def test_stopping_the_session_ends_the_tunnel(endpoint, cli, colab, sshd):
    cli.new("orch-s5", "T4")
    conn = connect(_via_colab(endpoint, cli, sshd, "orch-s5"))
    try:
        cli.stop("orch-s5")
        deadline = time.monotonic() + 3
        while conn.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not conn.alive
    finally:
        conn.close()
    assert colab.bridge_pids() == []
