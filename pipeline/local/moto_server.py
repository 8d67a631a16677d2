"""moto's server, as the local stack runs it: with SQS ReceiveMessage in linear time.

moto (5.x) checks each message it is about to return against the queue's retention period by
computing *every* queue attribute, and two of those (ApproximateNumberOfMessages...) walk the
whole queue: a receive of 10 messages costs O(10 x messages held). With 2,000 messages queued
or in flight that is ~0.9 s per ReceiveMessage on this machine (0.09 s with 200), against tens
of milliseconds on SQS. It made any consumer that keeps many messages in flight (the import
sensor, by design) look slower than one that does not, for a reason that is not in AWS.

The fix reads the retention period the check needs and nothing else; behaviour is unchanged.
``python -m pipeline.local.moto_server`` takes moto.server's arguments.
"""

from __future__ import annotations

import sys


def patch_sqs() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self, queue_name: str, message) -> bool:
        queue = self.get_queue(queue_name)
        return int(queue.message_retention_period) + message.sent_timestamp / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as moto_main

    patch_sqs()
    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
