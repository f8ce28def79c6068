from overlaynet.control.scheduler import Candidate, schedule


def nodes(*pods, free=10):
    return [Candidate(f"node-{i}", {"kubernetes.io/hostname": f"node-{i}", "zone": "a" if i == 1 else "b"},
                      True, free, count) for i, count in enumerate(pods, 1)]


def test_fewest_pods_wins_ties_by_name():
    assert schedule(None, {}, nodes(2, 1, 1)).node == "node-2"


def test_node_name_is_honoured():
    assert schedule("node-3", {}, nodes(0, 0, 5)).node == "node-3"


def test_node_selector_filters():
    assert schedule(None, {"zone": "a"}, nodes(9, 0, 0)).node == "node-1"


def test_unschedulable_says_why_like_kube_scheduler():
    decision = schedule(None, {"zone": "c"}, nodes(0, 0, 0))
    assert decision.node is None and decision.reason == "Unschedulable"
    assert decision.message == "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."


def test_full_nodes_are_skipped_and_reported():
    decision = schedule(None, {}, nodes(1, 1, free=0))
    assert decision.node is None and "2 node(s) had no free pod IPs" in decision.message


def test_unknown_node_name():
    decision = schedule("node-9", {}, nodes(0))
    assert decision.node is None and decision.message == 'node "node-9" not found'


def test_not_ready_nodes_are_skipped():
    candidates = nodes(0, 5)
    candidates[0] = Candidate("node-1", {}, False, 10, 0)
    assert schedule(None, {}, candidates).node == "node-2"
