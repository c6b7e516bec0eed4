"""Names shared by the spec, the testbed, the graders, the rewards and the evaluation."""

SEVERITIES = ("negligible", "low", "moderate", "high")
INTENTS = ("benign", "dual_use", "malicious")
MODES = ("direct", "safe_completion", "refusal_redirect", "hard_refusal")
REFUSAL_MODES = ("refusal_redirect", "hard_refusal")  # the modes that decline the request

SEVERITY_INDEX = {name: i for i, name in enumerate(SEVERITIES)}
INTENT_INDEX = {name: i for i, name in enumerate(INTENTS)}
MODE_INDEX = {name: i for i, name in enumerate(MODES)}
