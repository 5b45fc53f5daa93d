from __future__ import annotations

from rest_framework import serializers

from apps.tasks.models import Attempt, Event, Task


class EventOutput(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset_id")
    version = serializers.CharField(source="commit.version", default=None)
    range_start = serializers.CharField(allow_null=True)
    range_end = serializers.CharField(allow_null=True)
    producer_task = serializers.UUIDField(source="producer_task_id", allow_null=True)

    class Meta:
        model = Event
        fields = [
            "id",
            "dataset",
            "kind",
            "mode",
            "idempotency_key",
            "version",
            "range_start",
            "range_end",
            "event_time",
            "payload",
            "producer_task",
            "created_at",
        ]

    def to_representation(self, instance: Event) -> dict:
        data = super().to_representation(instance)
        data["range_start"] = data["range_start"] or None
        data["range_end"] = data["range_end"] or None
        return data


class IngestedOutput(serializers.Serializer):
    id = serializers.UUIDField(source="event_id")
    created = serializers.BooleanField()


class IngestOutput(serializers.Serializer):
    events = IngestedOutput(many=True)


class AttemptOutput(serializers.ModelSerializer):
    class Meta:
        model = Attempt
        fields = [
            "number",
            "worker_id",
            "started_at",
            "heartbeat_at",
            "ended_at",
            "outcome",
            "error",
        ]


class TaskOutput(serializers.ModelSerializer):
    dag = serializers.CharField(source="dag_version.dag.name")
    dag_version = serializers.IntegerField(source="dag_version.number")
    node = serializers.CharField(source="node_id")
    event = serializers.UUIDField(source="event_id")
    output_event = serializers.UUIDField(source="output_event_id", allow_null=True)

    class Meta:
        model = Task
        fields = [
            "id",
            "dag",
            "dag_version",
            "node",
            "state",
            "lane",
            "mode",
            "attempt",
            "max_attempts",
            "event",
            "output_event",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "next_attempt_at",
            "error",
        ]


class TaskDetailOutput(TaskOutput):
    attempts = AttemptOutput(many=True)

    class Meta(TaskOutput.Meta):
        fields = [*TaskOutput.Meta.fields, "attempts"]
