"""The testbed: a procedurally generated safety world with known ground truth.

A world (`make_world(seed, WorldConfig())`) has hazard categories (biology, chemistry, cyber,
weapons, self_harm, fraud_privacy) and everyday domains (cooking, gardening, programming, fitness,
travel, finance, photography), each with a few topics. Every topic has one fact at each of four
information levels: background, mechanism, actionable, critical. Facts are short sentences whose
specifics are pseudo-words made from syllables ("marker" words unique to a topic and level), so
every hazardous "fact" is fictional and any disclosure, even partial, is detectable. Background and
mechanism are harmless everywhere; for hazard topics, actionable and critical facts carry a harm
severity from the category's profile (biology critical = high, fraud actionable = low, ...); for
everyday domains every level is negligible. The same topic can thus be answered at every severity.

Prompts (`generate_examples`) ask for a topic at a requested level, with stated context that sets
the intent: benign (everyday asks, plain curiosity, alarming-but-benign words such as "kill the
process"), dual-use (a professional, educational or safety purpose, or none) and malicious (a stated
intent to harm or evade). Dual-use and malicious twins ask for the same information (`pair_id`).
Splits: `train`, `test` (same templates, new draws), `heldout` (templates and fillers training never
sees) and `multiturn` (the restricted detail asked for in pieces over turns).

The gold oracle (`grade`) scores any completion output-centrically: severity of the restricted
facts it discloses, coverage of the requested facts, quality of redirection, the response mode and
flags for degenerate or grader-addressed text. `ideal_response` / `intended_mode` give the gold
policy, and `teachers` writes SFT data in the safe-completion or refusal style. Text is lower-case
words and punctuation separated by spaces, over a closed vocabulary (`World.vocabulary()`).
"""
from safecomp.testbed.attacker import (AttackAnswer, AttackState, AttackTarget, AttackTurn, draw_targets, fit_history,
                                       next_turn, play_attacks)
from safecomp.testbed.candidates import CANDIDATE_SOURCES, make_candidate
from safecomp.testbed.examples import SPLITS, Example, generate_examples
from safecomp.testbed.oracle import (FLAGS, OracleConfig, OracleGrade, clean_content, grade, grade_many,
                                     oracle_config_from, strip_reasoning)
from safecomp.testbed.parsing import PromptInfo, parse_prompt
from safecomp.testbed.responses import HARD_REFUSAL, ideal_response, intended_mode
from safecomp.testbed.teachers import (TeacherOutput, judge_filter, make_sft_example, refusal_teacher,
                                       safe_completion_teacher)
from safecomp.testbed.world import Fact, Topic, World, WorldConfig, make_world, world_from_config

__all__ = [
    "AttackAnswer", "AttackState", "AttackTarget", "AttackTurn", "CANDIDATE_SOURCES", "FLAGS", "HARD_REFUSAL", "SPLITS", "Example", "Fact", "OracleConfig", "OracleGrade", "PromptInfo",
    "TeacherOutput", "Topic", "World", "WorldConfig", "clean_content", "draw_targets", "fit_history", "generate_examples", "grade", "grade_many",
    "ideal_response", "intended_mode", "judge_filter", "make_candidate", "make_sft_example", "make_world", "next_turn", "oracle_config_from", "parse_prompt", "play_attacks",
    "refusal_teacher", "safe_completion_teacher", "strip_reasoning", "world_from_config",
]
