; Methods, constructors and lambdas.
(method_declaration
  name: (identifier) @function.name
  body: (block) @function.body) @function
(constructor_declaration
  name: (identifier) @function.name
  body: (constructor_body) @function.body) @function
(lambda_expression
  body: (_) @function.body) @function
