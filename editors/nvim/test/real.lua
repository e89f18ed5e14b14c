-- Headless end-to-end test of the plugin against `intarsia serve` with the real default model (ORT engine; run
-- by tests/test_real_editors.py through minimal_init.lua). In a well-known function it types the start of the
-- last line in insert mode, waits for the model's ghost text, accepts it with <Tab>, then runs
-- :IntarsiaGenerate on a function with a docstring, and writes the buffer (the Python side checks that it
-- parses). Checks go to cfg.result_file as JSON (see harness.lua).

local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local cfg, api, intarsia = H.cfg, H.api, H.intarsia
local check, wait_for, feed, line, status, mode = H.check, H.wait_for, H.feed, H.line, H.status, H.mode

H.run(function()
  vim.cmd.edit(vim.fn.fnameescape(cfg.workspace .. '/main.py'))
  wait_for('the Intarsia client to attach', function()
    local c = intarsia.client()
    return c and c.initialized and c
  end, 20000)
  local st = wait_for('the real model to be ready', function()
    local s = status()
    assert(s.state ~= 'failed', vim.inspect(s.error))
    return s.state == 'ready' and s
  end, 300000)
  check('the server runs the ORT engine', st.settings.engine == 'ort', st.settings)

  -- 1. Ghost text from the model at the end of `    return `, accepted with <Tab>.
  api.nvim_win_set_cursor(0, { 4, 0 })
  feed('A')
  wait_for('insert mode', function()
    return mode() == 'i'
  end, 3000)
  feed('return ')
  local s = wait_for('a suggestion from the model', function()
    return intarsia.suggestion()
  end, 240000)
  check('the suggestion continues the recursion', s.text:find('fibonacci(n', 1, true) ~= nil, s)
  local before = line(4)
  feed('<Tab>')
  wait_for('the accept', function()
    return line(4) ~= before
  end, 5000)
  check('<Tab> puts the suggestion into the buffer', line(4):find('fibonacci(n', 1, true) ~= nil, line(4))
  feed('<Esc>')
  wait_for('normal mode', function()
    return mode() == 'n'
  end, 3000)

  -- 2. :IntarsiaGenerate writes a body from the docstring.
  local n = api.nvim_buf_line_count(0)
  api.nvim_buf_set_lines(0, -1, -1, false, { '', '', 'def rectangle_area(width, height):',
    '    """Return the area of a width x height rectangle."""', '    pass' })
  api.nvim_win_set_cursor(0, { n + 3, 4 })
  vim.cmd('IntarsiaGenerate')
  wait_for('the generated body', function()
    return line(n + 5) ~= '    pass'
  end, 240000)
  local body = table.concat(api.nvim_buf_get_lines(0, n + 4, -1, false), '\n')
  check('the generated body uses the parameters', body:find('width', 1, true) and body:find('height', 1, true), body)
  vim.cmd('silent write')
  check('the buffer was written', vim.bo.modified == false, vim.bo.modified)
end)
