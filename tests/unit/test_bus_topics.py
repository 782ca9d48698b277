"""Reading the broker's CreateTopics answer: aiokafka raises for none of its per-topic errors."""
from shared.bus import refused_topics


def test_a_topic_the_broker_refuses_is_named_and_one_that_exists_is_fine() -> None:
    answer = [("leads.intake", 0, None), ("leads.routing", 36, "Topic with this name already exists."),
              ("leads.sla", 38, "Replication factor: 3 larger than available brokers: 1."), ("leads.deadletter", 42, None)]
    assert refused_topics(answer) == ["leads.sla: Replication factor: 3 larger than available brokers: 1.",
                                      "leads.deadletter: error 42"]
    assert refused_topics([("leads.intake", 0, None)]) == []
    assert refused_topics([("leads.intake", 0), ("leads.sla", 41)]) == ["leads.sla: error 41"]  # CreateTopics v0
