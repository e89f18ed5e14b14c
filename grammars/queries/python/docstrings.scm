; Docstrings: the first statement of a module, function or class when it is a string literal.
(module . (expression_statement (string) @docstring))
(function_definition body: (block . (expression_statement (string) @docstring)))
(class_definition body: (block . (expression_statement (string) @docstring)))
