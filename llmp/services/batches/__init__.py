"""Batches (/v1/batches): OpenAI's Batch API on the local engine.

Life cycle (each status sets its `<status>_at` timestamp):

    validating -> in_progress -> finalizing -> completed | expired
    validating -> failed                       (the input file has invalid lines)
    validating | in_progress -> cancelling -> cancelled

Every input line is checked before anything runs (`validation.validate_lines`: JSON, a unique
custom_id, method POST, url equal to the batch's endpoint, a valid body, a known model, at most
50,000 lines); one bad line fails the batch with `errors: {object: "list", data: [{code,
message, line, param}]}`. Valid lines become `batch_lines` rows, and the `BatchRunner`
(`runner`) executes them through `llmp.services.inference` at `Priority.BATCH` (interactive
requests go first), as many at a time as the model has slots. Each result is persisted the
moment it is known, and a line is answered only while it is pending, so a server killed
mid-batch resumes on restart without losing or repeating a line. At finalize the output file
(successes) and the error file (failures, expired and cancelled lines) are written from those
rows in input order and registered as `batch_output` files.

`completion_window`: OpenAI accepts only "24h". llmp also accepts any other duration written
`<n>s|m|h|d` up to 7 days (e.g. "1h", or "30s" to see expiry happen): past the window the
finished lines are kept and the unfinished ones are reported expired (status `expired`).
`request_counts.failed` counts failed, expired and cancelled lines alike (all of them are in
the error file), so completed + failed = total once the batch is finished.

The package: `validation` (input lines, completion window), `api` (the batch object),
`service` (`Batches`: create, list, retrieve, cancel), `runner` (`BatchRunner`).
"""
from llmp.services.batches.api import ACTIVE, to_api
from llmp.services.batches.runner import JOB_KIND, MAX_CRASHES, PREPARE, BatchRunner
from llmp.services.batches.service import Batches
from llmp.services.batches.validation import (
                                              ENDPOINTS,
                                              LINE_SHAPES,
                                              MAX_LINES,
                                              Validation,
                                              check_body,
                                              parse_window,
                                              read_lines,
                                              validate_lines,
)

__all__ = ["ACTIVE", "ENDPOINTS", "JOB_KIND", "LINE_SHAPES", "MAX_CRASHES", "MAX_LINES", "PREPARE",
           "BatchRunner", "Batches", "Validation", "check_body", "parse_window", "read_lines",
           "to_api", "validate_lines"]
