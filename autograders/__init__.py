"""Instructor tools: generate the student release and grade submissions with nbgrader."""
