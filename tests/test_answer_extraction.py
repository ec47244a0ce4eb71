# Copyright 2025 The hpt-trl authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

import pytest

from hpt_trl.answer_extraction import extract_boxed_answer, strip_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{ \\frac{a}{\\sqrt{b^{2}}} }", "\\frac{a}{\\sqrt{b^{2}}}"),
        ("\\boxed{1} and \\boxed{2}", "2"),
        ("\\boxed{\\frac{\\boxed{1}}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),  # an escaped brace is not a group
        ("\\fbox{x+1}", "x+1"),
        ("$\\boxed 7$", "7"),
        ("\\boxed {3}", "3"),
        ("\\boxed{}", ""),
        ("no box here", None),
        ("\\boxed{\\frac{1}{2", None),
        ("\\boxed", None),
        ("\\boxedx", None),
        ("}}}\\boxed{1}}}}", "1"),
    ],
)
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("\\boxed{204}", "204"),
        ("  \\boxed{\\frac{1}{2}} ", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{1}+\\boxed{2}", "\\boxed{1}+\\boxed{2}"),  # not one surrounding box
        ("\\boxed{\\boxed{1}}", "\\boxed{1}"),  # only one level
        (" 27 ", "27"),
        (27, "27"),
    ],
)
def test_strip_boxed(answer, expected):
    assert strip_boxed(answer) == expected
