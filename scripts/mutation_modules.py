"""Which code each mutation-testing module mutates and which tests guard it (scripts/mutation.py).

A test listed for a module runs in-process under every mutant of that module whose function it
calls (mutmut maps functions to tests by tracing one run of them all).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Module:
    mutate: tuple[str, ...]
    """Globs of the files to mutate (mutmut's `only_mutate`)."""
    tests: tuple[str, ...]
    """The tests that guard them: files or node ids, run in-process (a test that starts
    `tokend` as a subprocess would run the unmutated code, so none is listed)."""
    slow: tuple[str, ...] = ()
    """Node ids among `tests` too slow to run for every mutant (a property test of thousands
    of examples, a day-long simulation): left out here, they still run in the suite."""
    copy: tuple[str, ...] = ()
    """More directories the tests read (besides tokend/, tests/ and config/)."""
    kube: bool = False
    """The tests need a Kubernetes API server: one is started for the whole run and shared
    through $TOKEND_TEST_KUBE (tests/support/kube_serve.py), not one per mutant."""


PROPERTIES = "tests/unit/test_properties.py"
CONCURRENT_READER = (
    "tests/unit/test_file_sink.py::test_concurrent_reader_never_sees_partial_content"
)

MODULES: dict[str, Module] = {
    "engine": Module(
        ("tokend/engine/*",),
        (
            "tests/unit/test_policy.py",
            "tests/unit/test_publisher.py",
            "tests/unit/test_runner.py",
            "tests/unit/test_engine_parts.py",
            "tests/unit/test_job_parts.py",
            "tests/unit/test_slot_parts.py",
            "tests/unit/test_engine_plumbing.py",
            "tests/unit/test_census.py",
            "tests/unit/test_metrics_attention.py",
            "tests/unit/test_verifier_timing.py",
            "tests/integration/test_engine.py",
            "tests/integration/test_faults.py",
            "tests/unit/test_state.py",
            "tests/unit/test_state_messages.py",
            "tests/unit/test_verifier.py",
            "tests/integration/test_recovery.py",
            "tests/integration/test_reload.py::test_engine_reload",
            "tests/integration/test_reload.py::"
            "test_a_job_stopped_while_its_request_is_in_flight_plans_no_more_runs",
            "tests/integration/test_simulation.py",
            "tests/integration/test_metrics.py",
            "tests/integration/test_leadership.py",
            "tests/integration/test_on_demand.py",
        ),
        slow=(
            "tests/integration/test_simulation.py::test_a_day_against_a_flaky_identity_provider",
            "tests/integration/test_recovery.py::"
            "test_after_an_outage_every_consumer_is_whole_again_within_15_s",
        ),
    ),
    "files": Module(
        ("tokend/files.py", "tokend/writers.py"),
        (
            "tests/unit/test_files.py",
            "tests/unit/test_writers.py",
            "tests/unit/test_file_sink.py",
            "tests/unit/test_state.py",
        ),
        slow=(CONCURRENT_READER,),
    ),
    "oauth": Module(
        tuple(
            f"tokend/oauth/{name}.py"
            for name in (
                "__init__",
                "client",
                "dialects",
                "errors",
                "http",
                "jwks",
                "network",
                "response",
                "verify",
                "verify_options",
                "grants/__init__",
                "grants/base",
                "grants/certificate",
                "grants/client_secret",
                "grants/federated",
                "grants/keys",
                "grants/managed_identity",
            )
        ),
        (
            "tests/unit/test_token_parsing.py",
            "tests/unit/test_errors.py",
            "tests/integration/test_oauth_parts.py",
            "tests/unit/test_certificate_keys.py",
            "tests/unit/test_credential_config.py",
            "tests/credentials/test_certificate.py",
            "tests/credentials/test_federated.py",
            "tests/credentials/test_managed_identity.py",
            "tests/credentials/test_verify.py",
            "tests/unit/test_federated_parts.py",
            "tests/unit/test_managed_identity_parts.py",
            "tests/unit/test_grant_parts.py",
            "tests/unit/test_verify_check.py",
            "tests/integration/test_jwks.py",
            "tests/unit/test_certificate_grant.py",
            "tests/integration/test_client_parts.py",
            "tests/integration/test_client.py",
            "tests/integration/test_faults.py",
            "tests/integration/test_network.py",
            "tests/integration/test_network_parts.py",
            "tests/unit/test_network_receiver.py",
            f"{PROPERTIES}::test_error_responses_classify_cleanly",
            f"{PROPERTIES}::test_retry_after_never_raises",
        ),
    ),
    # The delegated grants (a user's password, device-code login): apart from "oauth" so that
    # module's cached verdicts survive their arrival.
    "login": Module(
        (
            "tokend/oauth/device_code.py",
            "tokend/oauth/grants/delegated.py",
            "tokend/oauth/grants/device_login.py",
            "tokend/oauth/grants/password.py",
            "tokend/oauth/grants/signin.py",
        ),
        (
            "tests/unit/test_delegated.py",
            "tests/integration/test_password.py",
            "tests/integration/test_device_login.py",
            "tests/unit/test_delegated_grants.py",
            "tests/unit/test_signin.py",
            "tests/integration/test_device_code.py",
        ),
    ),
    "transport": Module(
        ("tokend/transport.py",),
        (
            "tests/unit/test_transport.py",
            "tests/unit/test_listen_problem.py",
            "tests/unit/test_config.py",
            "tests/integration/test_client.py",
        ),
    ),
    "logs": Module(
        ("tokend/logs.py", "tokend/redaction.py"),
        (
            "tests/unit/test_logs.py",
            "tests/unit/test_redaction.py",
            "tests/unit/test_errors.py",
            "tests/unit/test_systemd.py",
        ),
    ),
    "config": Module(
        ("tokend/config.py", "tokend/config_checks.py", "tokend/validation.py"),
        (
            "tests/unit/test_config.py",
            "tests/unit/test_vault_config.py",
            "tests/unit/test_credential_config.py",
            "tests/integration/test_plugins.py",
            "tests/unit/test_endpoint.py",  # the endpoint: block's checks across keys
            f"{PROPERTIES}::test_any_text_is_a_config_or_a_config_error",
        ),
    ),
    "metrics": Module(
        ("tokend/metrics.py",),
        ("tests/integration/test_metrics.py", "tests/integration/test_metrics_problems.py"),
    ),
    "sinks": Module(
        (
            "tokend/sinks/__init__.py",
            "tokend/sinks/base.py",
            "tokend/sinks/file.py",
            "tokend/sinks/vault.py",
        ),
        (
            "tests/unit/test_file_sink.py",
            "tests/unit/test_writers.py",  # each file sink's directory is its writer lane
            "tests/unit/test_sink_parts.py",
            "tests/unit/test_config.py",
            "tests/integration/test_plugins.py",
            "tests/unit/test_vault_ownership.py",  # and the Vault sink's own decisions
            "tests/vault/test_kv.py",
            "tests/vault/test_drift.py",
        ),
        slow=(CONCURRENT_READER,),
    ),
    # Its tests need a real API server (tests/support/kube.py), started once for the run.
    "kubernetes": Module(
        ("tokend/sinks/kubernetes.py",),
        (
            "tests/kube/test_secret_sink.py",
            "tests/kube/test_secret_sink_parts.py",
            "tests/unit/test_kube.py",
        ),
        copy=("deploy",),  # the shipped Role the tests bind tokend's service account to
        kube=True,
    ),
}
