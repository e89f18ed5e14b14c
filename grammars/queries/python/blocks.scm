; Indented blocks (bodies of compound statements and their clauses).
(block) @block
