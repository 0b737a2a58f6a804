"""Ikomia HUB's test entry point: HUB calls ``test(task, data_dict)`` and expects "OK"."""

import logging

from ikomia.core import CWorkflowTask
from ikomia.utils.tests import run_for_test

logger = logging.getLogger(__name__)


def test(t: CWorkflowTask, data_dict: dict) -> tuple:
    """Run the task once with its current parameters (text-to-image needs no input)."""
    logger.info("===== Test::infer_kandinsky_2_2 =====")
    return run_for_test(t)
