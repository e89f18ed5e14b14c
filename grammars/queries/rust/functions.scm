; Functions (free, associated, trait default methods) and closures.
(function_item
  name: (identifier) @function.name
  body: (block) @function.body) @function
(closure_expression
  body: (_) @function.body) @function
