; Functions, methods and function literals.
(function_declaration
  name: (identifier) @function.name
  body: (block) @function.body) @function
(method_declaration
  name: (field_identifier) @function.name
  body: (block) @function.body) @function
(func_literal
  body: (block) @function.body) @function
