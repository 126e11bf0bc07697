"""Which tests prove which item (S1..S20) of the security checklist (docs/reliability.md, "Security checklist").

Two kinds of proof are counted by the reliability report plugin (tests/reliability_report.py) into
the report's ``security`` section:

* tests of this suite marked ``@pytest.mark.security("S4", ..., subject="unix")`` -- the
  module-level tests of tests/backends/*.py (the backend they ran on is the marker's ``subject``,
  or their ``scheme`` parameter) and tests/reliability/test_security_checklist.py;
* tests that cannot carry the marker, named here by ``item.originalname`` and registered with the
  plugin (:func:`reliability_report.register_patterns`) when this module is imported: the shipped
  contract's rows (``ipckit/testing/contract``: they run on every backend, the subject is the
  contract class's ``scheme``), and the tests of files other helpers own (tests/backends/test_mq.py
  and test_sysv_mq.py, tests/core, tests/ring, tests/reliability/test_fuzz.py).  A module-level
  test named here counts for subject ``"-"`` unless it has a ``scheme`` parameter; the backend it
  proves is given in the comment.

The names are exact (no wildcards), so a rename cannot make a pattern silently match something
else; tests/reliability/test_security_checklist.py checks, over a real collection of the suite,
that every name here matches at least one test and that every item S1..S20 has a proof.

tests/conftest.py imports this module in ``pytest_configure`` (after the plugin is loaded: an
earlier import defeats assert rewriting).  ``python tests/reliability/security_map.py`` prints the
mapping.
"""

from __future__ import annotations

from reliability_report import register_patterns

#: The checklist's items (docs/reliability.md, "Security checklist").
TITLES: dict[str, str] = {
    "S1": "generated names carry 128 random bits; user names are validated (InvalidAddress)",
    "S2": "exclusive create; a stale object of ours is reclaimed, a foreign one refused",
    "S3": "SysV keys are random with IPC_CREX, never ftok",
    "S4": "objects 0600 and directories 0700 by default, whatever the umask",
    "S5": "owner and mode verified on open",
    "S6": "sockets and FIFOs only where no other user can swap entries; no symlink followed",
    "S7": "other-user tests really run as a non-root uid",
    "S8": "abstract Unix sockets and zmq '@' endpoints off by default",
    "S9": "SO_PEERCRED checked at accept, before any payload",
    "S10": "authkey: HMAC challenge-response, bounded pre-auth reads, handshake deadline",
    "S11": "tcp binds loopback by default; anything else needs CURVE with an allow-list; key files 0600",
    "S12": "pickle never accepted from a peer not proven to be the same user",
    "S13": "authentication before deserialization",
    "S14": "max_message_size enforced on send, from the header on receive, in reassembly",
    "S15": "queue depth bounded in bytes",
    "S16": "shared memory is untrusted input",
    "S17": "exhaustion is ResourceExhausted naming the limit",
    "S18": "only the creator (or a process that proved it dead) removes; never another user's objects",
    "S19": "descriptors O_CLOEXEC; fork children cannot use inherited ends",
    "S20": "payloads and keys never in logs or exception messages",
}

#: Item -> names (``item.originalname``) of tests that prove it and cannot carry the marker.
SECURITY_TESTS: dict[str, list[str]] = {
    "S1": [
        "test_m11_names_outside_the_alphabet_are_invalid_addresses",     # test_mq.py (mq)
        "test_parse_url_gives_an_endpoint_or_invalid_address",           # test_fuzz.py (URL parser)
        "test_parse_url_of_a_non_string_is_invalid_address",             # test_fuzz.py
        "test_hostile_names_are_refused_by_connect_and_listen",          # test_fuzz.py (every named scheme)
    ],
    "S2": [
        "test_listen_twice_is_refused",                                  # ListenerContract
        "test_m10_a_queue_squatted_by_another_uid_is_refused_and_left_alone",  # test_mq.py (mq)
        "test_q6_squatted_queue_of_another_uid_is_refused",              # test_sysv_mq.py (sysv+mq)
        "test_q6_stale_endpoint_is_recreated_never_reused_no_ghost_messages",  # test_sysv_mq.py
    ],
    "S3": [
        "test_q6_taken_key_is_never_used_and_a_new_one_is_drawn",        # test_sysv_mq.py (sysv+mq)
    ],
    "S4": [
        "test_m10_queues_are_created_exclusively_0600_whatever_the_umask",  # test_mq.py (mq)
        "test_m10_another_uid_cannot_connect_or_open_our_queues",        # test_mq.py (mq, as uid 65534)
        "test_q6_queue_and_semaphores_are_owner_only_0600",              # test_sysv_mq.py (sysv+mq)
        "test_q6_other_uid_cannot_connect",                              # test_sysv_mq.py (as uid 65534)
    ],
    "S5": [
        "test_opener_refuses_an_endpoint_wider_than_its_mode",           # SecurityContract
    ],
    "S6": [
        "test_listen_refuses_a_parent_directory_others_can_swap",        # SecurityContract
    ],
    "S7": [
        "test_as_user_runs_as_nobody",                                   # tests/core/test_core.py
    ],
    "S10": [
        "test_unix_listener_survives_hostile_clients",  # test_fuzz.py (handshakes, with and without a key)
    ],
    "S12": [
        "test_pickle_refused_unless_trusted",                            # ChannelContract
        "test_default_serializer_follows_trust",                         # ChannelContract
        "test_widened_mode_voids_the_same_user_proof",                   # SecurityContract
        "test_trust_rule",                                               # tests/core/test_serializers.py
        "test_builtin_names_and_trust",                                  # tests/core/test_serializers.py
    ],
    "S14": [
        "test_max_message_size_exact_and_one_over",                      # ChannelContract
        "test_server_refuses_a_message_above_the_clients_limit",         # ListenerContract
        "test_client_refuses_a_message_above_the_servers_limit",         # ListenerContract
        "test_client_knows_the_servers_limit_before_accept",             # ListenerContract
        "test_m1_max_message_size_is_enforced_before_any_fragment",      # test_mq.py (mq)
        "test_q1_max_message_size_is_enforced_before_any_fragment",      # test_sysv_mq.py (sysv+mq)
        "test_fuzz_forged_fragments_in_a_real_posix_queue",              # test_queue_kit.py (reassembly)
        "test_fuzz_forged_fragments_in_a_real_sysv_queue",               # test_queue_kit.py (reassembly)
        "test_length_over_limit_is_message_too_large",                   # tests/core/test_framing.py
        "test_message_too_large_writes_nothing",                         # tests/ring/test_ring.py
    ],
    "S16": [
        "test_forged_records_of_a_live_listener",                        # test_fuzz.py (scheme parameter)
        "test_each_record_field_forged_alone",                           # test_fuzz.py (scheme parameter)
        "test_forged_records_without_a_listener",                        # test_fuzz.py (scheme parameter)
        "test_forged_shm_segments",                                      # test_fuzz.py (shm)
        "test_q7_forged_fragment_of_our_type_is_a_protocol_error_then_the_channel_works",  # test_sysv_mq.py
        "test_fuzz_mutated_real_ring",                                   # tests/ring/test_ring.py (fuzz target R)
        "test_fuzz_arbitrary_image",                                     # tests/ring/test_ring.py
        "test_fuzz_structured_records",                                  # tests/ring/test_ring.py
        "test_fuzz_valid_counters_arbitrary_records",                    # tests/ring/test_ring.py
    ],
    "S17": [
        "test_descriptor_limit_is_resource_exhausted_and_nothing_is_left",  # ErrorBoundaries
        "test_m7_queues_max_is_resource_exhausted_naming_it",            # test_mq.py (mq)
        "test_m7_rlimit_msgqueue_is_resource_exhausted_naming_it",       # test_mq.py (mq)
        "test_msgmni_exhaustion_is_resource_exhausted_naming_the_limit",  # test_sysv_mq.py (sysv+mq)
    ],
    "S18": [
        "test_m10_a_queue_squatted_by_another_uid_is_refused_and_left_alone",  # test_mq.py (left alone)
        "test_cleanup_removes_only_stale_objects_of_this_user",          # tests/core/test_cli.py
        "test_cleanup_refuses_a_prefix_outside_ipckit",                  # tests/core/test_cli.py
    ],
    "S19": [
        "test_bare_fork_child_cannot_use_inherited_ends",                # ForkContract
        "test_multiprocessing_child_cannot_use_ends_it_was_not_given",   # ForkContract
        "test_forked_helper_of_a_child_does_not_take_its_end",           # ForkContract
    ],
}

register_patterns(SECURITY_TESTS)


def describe() -> str:
    """The registered names as text, one item a paragraph (marked tests are found by collection)."""
    lines: list[str] = []
    for sid, title in TITLES.items():
        lines.append(f"{sid} {title}")
        lines.extend(f"    {name}" for name in SECURITY_TESTS.get(sid, []))
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
