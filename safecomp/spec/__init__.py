"""The content policy as user-editable, versioned YAML, and prompt rendering around it.

    spec = load_spec("safe_completion_fine")          # or a path to any policy YAML
    spec.section("biology").guidance("actionable")    # per-level guidance (fine specs)
    spec.decide("dual_use", hazard=True, level=2)     # the rule that applies -> Rule(mode=...)
    spec.conflicts()                                  # requests whose matching rules disagree (none here)
    render_teacher_prompt(spec, messages, category="biology")  # what the teacher sees
    render_student_prompt(messages)                   # what the student trains on (no spec)
    spec.rubric("safety").render(prompt, completion)  # an LLM-grader prompt answering "1".."4"

Shipped policies (`policies/`): `safe_completion_fine` and `safe_completion_coarse`, the same policy
at two granularities for the spec-detail ablation, and `safe_completion_inconsistent`, the fine policy
with clashing rules (declared with `conflicts: allowed`; a reader passing an rng to `decide` picks
one of the clashing rules at random) for the spec-clarity ablation.
"""
from safecomp.spec.render import (as_messages, format_conversation, render_rubric, render_student_prompt,
                                  render_teacher_messages, render_teacher_prompt, teacher_system_prompt)
from safecomp.spec.spec import (CONFLICT_POLICIES, GRANULARITIES, HAZARD_CATEGORIES, LEVELS, POLICY_DIR,
                                RUBRICS, SCORE_TOKENS, STYLES, Conflict, InformationLevel, LevelGuidance,
                                Mode, Rubric, Rule, Section, Severity, Spec, SpecError, list_specs,
                                load_spec, parse_spec)

__all__ = [
    "CONFLICT_POLICIES", "Conflict", "GRANULARITIES", "HAZARD_CATEGORIES", "LEVELS", "POLICY_DIR",
    "RUBRICS", "SCORE_TOKENS", "STYLES", "InformationLevel", "LevelGuidance", "Mode", "Rubric", "Rule", "Section", "Severity", "Spec",
    "SpecError", "as_messages", "format_conversation", "list_specs", "load_spec", "parse_spec",
    "render_rubric", "render_student_prompt", "render_teacher_messages", "render_teacher_prompt",
    "teacher_system_prompt",
]
