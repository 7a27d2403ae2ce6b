"""schemathesis hooks for tests/api/contract.rs (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis


@schemathesis.hook
def filter_body(context, body):
    """Keeps only form bodies whose `category` is text.

    In multipart/form-data every value is text: schemathesis sends a `category` of null, a
    number or a boolean (its negative cases) as the text `null`, `5` or `true`, which is a
    valid category, and then reports it accepted. Such a case tests nothing a form can carry.
    """
    operation = context.operation
    if operation is not None and operation.path.startswith("/api/upload"):
        if isinstance(body, dict) and "category" in body:
            return isinstance(body["category"], str)
    return True
