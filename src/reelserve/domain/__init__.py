"""Pure domain logic: request validation, model capabilities, the task state machine.

Nothing in this package performs I/O, so it is the easiest place to read and test.
"""
