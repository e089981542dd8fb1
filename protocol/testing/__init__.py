"""Test support that other implementations can use: the vector replay checker.

``from protocol.testing.vectors import check_vector`` checks one vector file
(``specs/vectors/*.json``) against this implementation; see that module.
"""
