; Function and method definitions, and lambdas.
(function_definition
  declarator: (function_declarator
    declarator: (_) @function.name)
  body: (compound_statement) @function.body) @function
(function_definition
  declarator: (pointer_declarator
    declarator: (function_declarator
      declarator: (_) @function.name))
  body: (compound_statement) @function.body) @function
(function_definition
  declarator: (reference_declarator
    (function_declarator
      declarator: (_) @function.name))
  body: (compound_statement) @function.body) @function
(lambda_expression
  body: (compound_statement) @function.body) @function
