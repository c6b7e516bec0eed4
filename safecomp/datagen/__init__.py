"""SFT data generation with judge filtering against a real teacher, resumable.

`python -m safecomp.datagen --help` (see `cli`) for the command line; from Python:
`datagen.run(datagen.read_prompt_file(path), teacher, judge, out_path)`.

Modules, lowest first (each imports only those above it):
  protocols   the Teacher / Judge protocols, Verdict, PromptItem, type aliases, DEFAULT_SPEC
  parsing     parse_teacher_output: a completion -> (reasoning, answer)
  prompts_io  read_prompt_file: a prompts JSONL -> PromptItems; the uid uniqueness check
  writer      JsonlAppender: one row per single append-mode write, so a kill tears at most one line
  teachers    HttpTeacher, CallableTeacher, LocalTeacher; spec_teacher_prompt
  judges      GraderJudge (any `safecomp.graders` grader as the filter), KeepAllJudge
  testbed     the testbed's prompts, teacher and judge behind the same interfaces
  runner      run / generate_row / Summary: the parallel, resumable generation loop
  cli         argument parsing and `main` (`__main__` runs it)
"""
from safecomp.datagen.cli import JUDGE_GRADERS, grader_judge, main
from safecomp.datagen.judges import GraderJudge, KeepAllJudge
from safecomp.datagen.parsing import ParseError, parse_teacher_output
from safecomp.datagen.prompts_io import check_unique, read_prompt_file
from safecomp.datagen.protocols import (DEFAULT_SPEC, Judge, Messages, PromptItem, Teacher, TeacherPromptFn,
                                        Verdict)
from safecomp.datagen.runner import Summary, generate_row, run
from safecomp.datagen.teachers import CallableTeacher, HttpTeacher, LocalTeacher, spec_teacher_prompt
from safecomp.datagen.testbed import TestbedJudge, TestbedTeacher, testbed_items
from safecomp.datagen.writer import JsonlAppender
# Re-exported for callers: the HTTP client that HttpTeacher wraps, and its error.
from safecomp.graders.client import ChatClient, RequestFailed
