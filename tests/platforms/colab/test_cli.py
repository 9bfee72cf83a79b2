"""orch's wrapper of the real `colab` CLI, and SSH through `colab ssh --proxy-mode`,
against the backend stand-in."""

from __future__ import annotations

import dataclasses
import time

import pytest

from orchestrator.errors import CapacityError, PrecheckError, TransientError
from orchestrator.platforms.colab.cli import (
    ColabCLI,
    classify,
    meaningful,
    parse_sessions,
    parse_usage,
    proxy_error_class,
)
from orchestrator.platforms.ssh.connection import connect
from tests.emulators.colab_backend import log_in
from tests.platforms.conftest import FAST


@pytest.fixture
def cli(colab, tmp_path) -> ColabCLI:
    made = ColabCLI(colab.executable, platform="colab", store=tmp_path / "store.json", timeout_s=30,
                    new_timeout_s=30)
    yield made
    log_in(colab.home)
    for s in made.sessions():  # nothing left running
        if s.name == "?":
            made.adopt("cleanup", s.endpoint)
            made.stop("cleanup")
        else:
            made.stop(s.name)


def _via_colab(endpoint, cli: ColabCLI, sshd, session: str):
    return endpoint(
        host="colab-runtime",
        host_key_name=f"colab-{session}",
        pinned=(f"{sshd.host_key.key_type} {sshd.host_key.base64}",),
        proxy=tuple(cli.proxy_argv(session, sshd.client_key.private)),
        proxy_errors=proxy_error_class,
        # The real CLI takes a second or two to start; the upgrade notice comes first.
        timeouts=dataclasses.replace(FAST, connect=15, banner=15),
    )


def test_the_real_sessions_output_with_its_shape_field_is_read(cli, colab):
    cli.new("orch-a1", "T4")
    [s] = cli.sessions()
    assert (s.name, s.hardware, s.shape, s.variant) == ("orch-a1", "T4", "Standard", "GPU")
    assert s.endpoint == colab.live()[0].endpoint
    cli.stop("orch-a1")
    assert cli.sessions() == []


def test_a_listing_orch_cannot_read_is_an_error_never_no_runtimes():
    assert parse_sessions("[orch-a1] gpu-t4-s-1 | Hardware: T4 | Colour: Blue\n") is None
    assert parse_sessions("[colab] No active sessions found on server.\n") == []


def test_a_412_refusal_is_capacity_and_a_400_names_the_accelerator(cli, colab):
    colab.refuse(412)
    with pytest.raises(CapacityError, match="Allocation refused"):
        cli.new("orch-r1", "T4")
    colab.eligible.discard("H100")
    with pytest.raises(CapacityError, match="rejected accelerator"):
        cli.new("orch-r2", "H100")


def test_not_logged_in_is_a_precheck_error_with_the_login_hint(cli, colab):
    (colab.home / ".config" / "colab-cli" / "token.json").unlink()
    with pytest.raises(PrecheckError, match="log in once"):
        cli.sessions()


def test_a_dead_refresh_token_is_a_precheck_error(cli, colab):
    log_in(colab.home, expired=True)
    colab.refresh_ok = False
    with pytest.raises(PrecheckError, match="log in once"):
        cli.usage()
    colab.refresh_ok = True
    assert cli.usage().balance == 100.0  # refreshed through the token endpoint


def test_a_traceback_box_is_reduced_to_its_exception_line(cli, colab):
    colab.fail("/tun/m/assignments", 500)
    with pytest.raises(TransientError, match="ColabRequestError: Failed to issue request GET .*Internal Server Error"):
        cli.sessions()
    text = "╭── Traceback ──╮\n│ x │\n╰──────╯\nValueError: bad\nthing\n"
    assert meaningful(text) == "ValueError: bad thing"
    assert classify("[colab] Allocation refused (precondition failed). This can mean") is CapacityError


def test_usage_reports_the_compute_unit_balance(cli, colab):
    colab.balance = 42.5
    cli.new("orch-u", "T4")
    usage = cli.usage()
    assert (usage.balance, usage.rate_per_hour, usage.assignments) == (42.5, 1.96, 1)
    assert parse_usage("Current balance: 1,298.50 compute units\nUsage rate: 0.07/hr\n").balance == 1298.5


def test_a_stalled_backend_is_killed_at_the_deadline(colab, tmp_path):
    cli = ColabCLI(colab.executable, store=tmp_path / "s.json", timeout_s=3)
    colab.stall("/tun/m/assignments", 30)
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not finish"):
        cli.sessions()
    assert time.monotonic() - started < 8


def test_the_version_is_checked_against_the_tested_range(cli):
    cli.check_version()
    cli._version = (0, 8, 1)
    with pytest.raises(PrecheckError, match=r"google-colab-cli>=0.7.2,<0.8"):
        cli.check_version()


def test_missing_cli_says_how_to_install_it(tmp_path):
    with pytest.raises(PrecheckError, match="pipx install"):
        ColabCLI(tmp_path / "nowhere" / "colab").sessions()


def test_ssh_through_the_real_proxy_mode_reaches_the_runtime_despite_the_upgrade_banner(endpoint, cli, sshd, colab):
    colab.latest_version = "0.9.0"  # the CLI prints its upgrade notice on stdout, the SSH stream
    colab.ws_delay_s = 2.5          # and the tunnel is slow: paramiko alone allows 2 s per line
    cli.new("orch-s1", "T4")
    conn = connect(_via_colab(endpoint, cli, sshd, "orch-s1"))
    try:
        assert conn.run("echo via-colab").out == "via-colab\n"
    finally:
        conn.close()


def test_no_connection_to_a_name_the_store_lacks_so_the_cli_creates_nothing(endpoint, cli, sshd, colab):
    with pytest.raises(TransientError, match="no entry for orch-none"):
        connect(_via_colab(endpoint, cli, sshd, "orch-none"))
    assert colab.live() == []


def test_an_expired_runtime_token_is_transient_and_a_listing_renews_it(endpoint, cli, sshd, colab):
    colab.token_ttl_s = 1.0  # the service stops accepting it long before the 3600 s it claims
    cli.new("orch-t1", "T4")
    time.sleep(1.5)
    with pytest.raises(TransientError, match="HTTP 404"):
        connect(_via_colab(endpoint, cli, sshd, "orch-t1"))
    colab.token_ttl_s = 30
    assert [s.name for s in cli.sessions()] == ["orch-t1"]  # writes the fresh token into the store
    connect(_via_colab(endpoint, cli, sshd, "orch-t1")).close()


def test_a_second_ssh_connection_is_refused_with_429_and_rsa_keys_are_a_precheck(endpoint, cli, sshd, colab):
    cli.new("orch-s2", "T4")
    first = connect(_via_colab(endpoint, cli, sshd, "orch-s2"))
    try:
        with pytest.raises(TransientError, match="HTTP 429"):
            connect(_via_colab(endpoint, cli, sshd, "orch-s2"))
    finally:
        first.close()
    assert proxy_error_class("[colab] Server rejected pubkey: unsupported key type.") is PrecheckError


def test_a_nameless_runtime_can_be_adopted_by_endpoint_and_stopped(cli, colab):
    rt = colab.add_runtime("T4")
    assert [s.name for s in cli.sessions()] == ["?"]
    cli.adopt("orch-o1", rt.endpoint)
    cli.stop("orch-o1")
    assert colab.live() == []


def test_a_refused_login_is_remembered_for_the_tick_until_a_call_works(cli, colab):
    log_in(colab.home, expired=True)
    colab.refresh_ok = False
    with pytest.raises(PrecheckError):
        cli.usage()
    assert cli.refused and "log in once" in cli.refused  # what login.expiring tells
    colab.refresh_ok = True
    cli.usage()
    assert cli.refused is None
