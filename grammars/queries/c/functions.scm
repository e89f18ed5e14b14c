; Function definitions (the name is the innermost identifier of the declarator).
(function_definition
  declarator: (function_declarator
    declarator: (identifier) @function.name)
  body: (compound_statement) @function.body) @function
(function_definition
  declarator: (pointer_declarator
    declarator: (function_declarator
      declarator: (identifier) @function.name))
  body: (compound_statement) @function.body) @function
