"""The checks of each lesson, one module per lesson, built on `olm_edu.grading`.

A check cell in a lesson reads `from olm_edu.checks import welcome as check` and then
`check.softmax(softmax)`; the hidden part of the cell calls the same check with `hidden=True`.
"""
