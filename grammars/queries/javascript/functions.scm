; Functions, methods and arrow functions. @function.body is the statement block (or the
; expression body of an arrow function).
(function_declaration
  name: (identifier) @function.name
  body: (statement_block) @function.body) @function
(generator_function_declaration
  name: (identifier) @function.name
  body: (statement_block) @function.body) @function
(function_expression
  body: (statement_block) @function.body) @function
(generator_function
  body: (statement_block) @function.body) @function
(arrow_function
  body: (_) @function.body) @function
(method_definition
  name: (_) @function.name
  body: (statement_block) @function.body) @function
