"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: unknown name, invalid parameter, unreadable file. Message is one line."""


class TrainingFailed(Exception):
    """A training run diverged (NaN/inf loss); the runner records the run as failed."""
