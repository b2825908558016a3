"""Extender wire format (hami-scheduler-spec.md §2, k8s-apis.md §8.3): Go field names, every key,
case-insensitive input, Go escaping; bad input is an error result."""

from __future__ import annotations

import json
import re

import pytest

from hami.scheduler.cycle import FilterOutcome
from hami.scheduler.explain import render_text
from hami.scheduler.extender import (
    ArgsError,
    decode_bind_args,
    decode_filter_args,
    encode_bind_result,
    encode_error_result,
    encode_filter_result,
    encode_priorities,
)


def test_spec_2_2_chosen_node_body_is_byte_exact():
    body = encode_filter_result(FilterOutcome(node_names=("node-a",)))
    assert body == (
        b'{"Nodes":null,"NodeNames":["node-a"],"FailedNodes":null,'
        b'"FailedAndUnresolvableNodes":null,"Error":""}'
    )


def test_spec_2_2_failed_nodes_sorted_like_go_maps():
    body = encode_filter_result(
        FilterOutcome(
            failed_nodes={"node-b": "NodeUnfitPod", "cpu-1": "node unregistered", "node-a": "NodeUnfitPod"}
        )
    )
    assert body == (
        b'{"Nodes":null,"NodeNames":null,"FailedNodes":{"cpu-1":"node unregistered","node-a":"NodeUnfitPod",'
        b'"node-b":"NodeUnfitPod"},"FailedAndUnresolvableNodes":null,"Error":""}'
    )


def test_go_escaping_of_errors():
    body = encode_error_result("quota <limit> & more")
    assert b'"Error":"quota \\u003climit\\u003e \\u0026 more"' in body
    assert json.loads(body)["Error"] == "quota <limit> & more"
    assert encode_bind_result("") == b'{"Error":""}'


def test_spec_2_1_input_keys_are_case_insensitive_last_wins():
    args = decode_filter_args(b'{"pod":{"metadata":{"name":"p"}},"nodenames":["a"],"NODENAMES":["b","c"]}')
    assert args.pod["metadata"]["name"] == "p" and args.node_names == ("b", "c") and args.nodes is None
    bind = decode_bind_args(b'{"podname":"p","PODNAMESPACE":"ns","PodUid":"u","node":"n1"}')
    assert (bind.pod_name, bind.pod_namespace, bind.pod_uid, bind.node) == ("p", "ns", "u", "n1")


def test_non_cache_capable_nodes_are_accepted_and_echoed():
    args = decode_filter_args(
        b'{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]},"NodeNames":null}'
    )
    assert args.node_names == ("a", "b")
    body = json.loads(encode_filter_result(FilterOutcome(node_names=("b",)), nodes=args.nodes))
    assert body["Nodes"]["items"] == [{"metadata": {"name": "b"}}] and body["NodeNames"] == ["b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "cannot unmarshal array into Go value of type v1.ExtenderArgs"),
        (b'{"Pod":null,"NodeNames":[]}', "extender args missing pod"),
        (b'{"Pod":"x","NodeNames":[]}', "cannot unmarshal string into Go struct field ExtenderArgs.Pod"),
        (b'{"Pod":{},"NodeNames":[1]}', "ExtenderArgs.NodeNames of type []string"),
        (b'{"Pod":{}}', "neither NodeNames nor Nodes"),
    ],
)
def test_bad_filter_args_name_the_problem(body, message):
    with pytest.raises(ArgsError, match=re.escape(message)):
        decode_filter_args(body)


def test_bad_bind_args():
    with pytest.raises(ArgsError, match=r"ExtenderBindingArgs\.PodUID of type string"):
        decode_bind_args(b'{"PodName":"p","PodUID":5,"Node":"n"}')
    with pytest.raises(ArgsError, match="need PodName and Node"):
        decode_bind_args(b'{"PodName":"p"}')


def test_host_priority_list():
    assert encode_priorities([("a", 10), ("b", 0)]) == b'[{"Host":"a","Score":10},{"Host":"b","Score":0}]'


def test_why_text_rendering():
    doc = {
        "namespace": "default",
        "name": "big",
        "uid": "u1",
        "time": "2026-01-01T00:00:00Z",
        "outcome": "unschedulable",
        "message": "0/2 nodes fit",
        "candidates": 2,
        "request": ["container 0 (main): 1 x NVIDIA, 90000 MiB, 0 cores"],
        "nodes": [
            {
                "node": "n1",
                "reason": "NodeUnfitPod",
                "detail": "1/1 CardInsufficientMemory",
                "container": 0,
                "vendor": "NVIDIA",
                "devices": [{"message": "GPU-a: free 80000 MiB < 90000 MiB"}],
            },
            {"node": "cpu", "reason": "node unregistered", "detail": "", "devices": []},
        ],
        "omittedNodes": 3,
    }
    text = render_text(doc)
    assert "Pod default/big (uid u1)" in text
    assert "  n1: NodeUnfitPod (container 0, NVIDIA): 1/1 CardInsufficientMemory" in text
    assert "      - GPU-a: free 80000 MiB < 90000 MiB" in text
    assert "  cpu: node unregistered\n" in text
    assert "... and 3 more node(s) not shown" in text
