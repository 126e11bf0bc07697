"""Which shipped contract tests prove which fault scenario (FS01..FS18) of the fault matrix.

The contract's tests (``ipckit/testing/contract``) run on every backend, but they ship with the
library and cannot carry this suite's ``@pytest.mark.fs`` marker; this module names them instead,
by the test method's name (``item.originalname``), and registers the names with the reliability
report plugin (:func:`reliability_report.register_patterns`) when it is imported.  tests/conftest.py
imports it, so every run -- tests/backends included -- counts them; the backend is the contract
class's ``scheme`` (:func:`reliability_report.subject_of`).

The names are exact (no wildcards): a pattern that also matched a backend file's own module-level
test would count it for no backend (``"-"``).  test_fault_matrix.py checks, over a real collection
of tests/backends, that every name matches at least one contract test run by a backend class and
nothing else.  The scenarios the contract does not prove yet are tests of test_fault_matrix.py,
marked with ``@pytest.mark.fs``.

``python tests/reliability/scenarios.py`` prints the mapping (docs/reliability.md, "Fault matrix",
lists it too).

Left out on purpose: the one-way (pub/sub) contract's rows (``OneWayContract``: a killed
publisher or subscriber, a close waking a receive).  Its classes carry no ``scheme``, so their
cases would be counted for no backend.
"""

from __future__ import annotations

from reliability_report import register_patterns

#: What each scenario is (docs/reliability.md, "Fault matrix").
TITLES: dict[str, str] = {
    "FS01": "kill writer between messages (and a process that exits without closing)",
    "FS02": "kill writer mid-frame",
    "FS03": "kill writer after commit, before wake-up",
    "FS04": "kill while holding a semaphore or lock",
    "FS05": "kill mid-handshake (a client that leaves before accept)",
    "FS06": "kill creator before init completes",
    "FS07": "kill receiver with data in flight",
    "FS08": "stuck peer (SIGSTOP/SIGCONT, full buffers)",
    "FS09": "signals during blocking calls (storm; a handler's exception)",
    "FS10": "close() from another thread",
    "FS11": "restart with the same name after a crash",
    "FS12": "name squatting or endpoint hijack",
    "FS13": "other-uid access",
    "FS14": "forged or oversized length",
    "FS15": "garbage or corrupt frames",
    "FS16": "resource exhaustion",
    "FS17": "fork after create",
    "FS18": "peer restart or reconnect",
}

#: Scenario -> names of the contract's test methods that prove it (see the module docstring).
CONTRACT_TESTS: dict[str, list[str]] = {
    "FS01": [
        "test_sender_killed_after_sending",                           # PeerDeathContract
        "test_send_after_a_receive_saw_the_peer_die",                 # PeerDeathContract
        "test_blocked_recv_sees_peer_death",                          # PeerDeathContract
        "test_killed_peer_reads_peer_died_on_send_and_recv",          # PeerExitContract
        "test_clean_exit_reads_end_of_channel_on_send_and_recv",      # PeerExitContract: close / return
        "test_spawned_child_returning_without_close_exits_cleanly",   # CrossProcessContract
        "test_aio_peer_killed_is_peer_died",                          # AioContract
        "test_aio_waiting_recv_sees_peer_death",                      # AioContract
        "test_fileno_readable_on_peer_death",                         # WaitContract
        "test_fileno_after_peer_sent_and_died",                       # WaitContract
    ],
    "FS02": [
        "test_writer_killed_mid_frame",                               # FramedStreamContract
        "test_writer_killed_mid_large_frame",                         # FramedStreamContract
    ],
    "FS05": [
        "test_accept_drops_a_raw_client_that_never_says_hello",       # ListenerContract
    ],
    "FS07": [
        "test_send_to_killed_reader",                                 # PeerDeathContract
        "test_peer_died_stays_for_every_send",                        # PeerDeathContract
    ],
    "FS08": [
        "test_send_timeout_mid_frame_aborts_the_message",             # FramedStreamContract (stopped reader)
        "test_close_finishes_an_aborted_frame",                       # FramedStreamContract (stopped reader)
    ],
    "FS09": [
        "test_recv_timeout_under_signal_storm",                       # ChannelContract
        "test_large_under_signal_storm",                              # LargeMessageContract
        "test_send_to_idle_peer_interrupted",                         # InterruptContract
        "test_send_to_draining_peer_interrupted",                     # InterruptContract
        "test_recv_interrupted_mid_message",                          # InterruptContract
        "test_handler_exception_ends_a_wait_at_once",                 # InterruptContract (recv, poll)
        "test_send_interrupted_mid_frame_aborts_the_message",         # FramedStreamContract
    ],
    "FS10": [
        "test_close_from_another_thread_wakes_recv",                  # ChannelContract
        "test_close_from_another_thread_wakes_poll",                  # ChannelContract
        "test_close_wakes_blocked_accept",                            # ListenerContract
        "test_close_from_another_thread_ends_the_wait",               # WaitContract
        "test_aio_close_wakes_a_waiting_recv",                        # AioContract
    ],
    "FS12": [
        "test_listen_twice_is_refused",                               # ListenerContract
        "test_listen_refuses_a_parent_directory_others_can_swap",     # SecurityContract
    ],
    "FS13": [
        "test_widened_mode_voids_the_same_user_proof",                # SecurityContract
        "test_opener_refuses_an_endpoint_wider_than_its_mode",        # SecurityContract
    ],
    "FS14": [
        "test_max_message_size_exact_and_one_over",                   # ChannelContract
        "test_server_refuses_a_message_above_the_clients_limit",      # ListenerContract
        "test_client_refuses_a_message_above_the_servers_limit",      # ListenerContract
        "test_client_knows_the_servers_limit_before_accept",          # ListenerContract
    ],
    "FS15": [
        "test_decode_error_leaves_channel_usable",                    # ChannelContract
        "test_reader_refuses_a_bad_commit_byte",                      # FramedStreamContract
        "test_reader_discards_aborted_frames",                        # FramedStreamContract
        "test_accept_drops_a_raw_client_that_never_says_hello",       # ListenerContract (garbage hello)
    ],
    "FS16": [
        "test_descriptor_limit_is_resource_exhausted_and_nothing_is_left",  # ErrorBoundaries
    ],
    "FS17": [
        "test_bare_fork_child_cannot_use_inherited_ends",             # ForkContract
        "test_multiprocessing_child_cannot_use_ends_it_was_not_given",  # ForkContract
        "test_forked_helper_of_a_child_does_not_take_its_end",        # ForkContract
        "test_end_handed_while_a_parent_thread_is_inside_send",       # ForkContract
    ],
    "FS18": [
        "test_messages_of_a_client_that_left_before_accept_are_delivered",  # ListenerContract
    ],
}

register_patterns(CONTRACT_TESTS)


def describe() -> str:
    """The mapping as text, one scenario a paragraph."""
    lines: list[str] = []
    for fs, title in TITLES.items():
        lines.append(f"{fs} {title}")
        for name in CONTRACT_TESTS.get(fs, []):
            lines.append(f"    contract: {name}")
        if fs not in CONTRACT_TESTS:
            lines.append("    contract: none (tests/reliability/test_fault_matrix.py only)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
