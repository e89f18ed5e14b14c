-- Headless end-to-end test of the plugin against `intarsia serve` with the test engine (run by
-- tests/test_editors_nvim.py through minimal_init.lua). It types in insert mode, waits for the ghost text,
-- accepts it with the configured keys, and runs :IntarsiaGenerate; each check is written to
-- cfg.result_file as JSON ({checks = [{name, ok, detail}], done, messages}); the exit status is 0 when every
-- check passed. The steps run in a coroutine that yields to the main loop, so that typed keys, insert-mode
-- autocommands, timers and LSP messages are processed as in an interactive session.

local H = dofile(vim.fs.joinpath(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)), 'harness.lua'))
local cfg, api, intarsia, ghost, messages = H.cfg, H.api, H.intarsia, H.ghost, H.messages
local check, wait_for, feed, line, marks, status, suggestion_is, mode =
  H.check, H.wait_for, H.feed, H.line, H.marks, H.status, H.suggestion_is, H.mode

H.run(function()
  vim.cmd.edit(vim.fn.fnameescape(cfg.workspace .. '/main.py'))
  check('the buffer is a python buffer', vim.bo.filetype == 'python', vim.bo.filetype)
  local client = wait_for('the Intarsia client to attach', function()
    local c = intarsia.client()
    return c and c.initialized and c
  end, 20000)
  check('the client is named intarsia and uses UTF-8 positions', client.name == 'intarsia'
    and client.offset_encoding == 'utf-8', { client.name, client.offset_encoding })
  check('the extmark path is used (no vim.lsp.inline_completion in this Neovim)', not intarsia.native,
    vim.version())
  local st = wait_for('the engine to be ready', function()
    local s = status()
    assert(s.state ~= 'failed', vim.inspect(s.error))
    return s.state == 'ready' and s
  end, 20000)
  check('the server runs the test engine', st.settings.engine == 'test', st.settings)
  check('the workspace is the root folder', st.root == cfg.workspace, st.root)

  -- 1. Type, see the ghost text, accept it with <Tab>.
  api.nvim_win_set_cursor(0, { 2, 0 })
  feed('itotal = ')
  wait_for('the ghost text "compute()"', suggestion_is('compute()'))
  local m = marks()
  check('one extmark shows the suggestion inline at the cursor', #m == 1 and m[1][2] == 1 and m[1][3] == 8
    and m[1][4].virt_text_pos == 'inline' and m[1][4].virt_text[1][1] == 'compute()', m)
  check('the suggestion is not in the buffer yet', line(2) == 'total = ', line(2))
  feed('<Tab>')
  wait_for('the accept', function()
    return line(2) == 'total = compute()'
  end, 3000)
  check('<Tab> inserts the suggestion and moves the cursor after it',
    api.nvim_win_get_cursor(0)[2] == #'total = compute()' and mode() == 'i', api.nvim_win_get_cursor(0))
  check('the ghost text is gone after the accept', #marks() == 0 or intarsia.suggestion() == nil, marks())
  wait_for('the server to record the accept', function()
    return status().acceptance.accepted >= 1
  end, 5000)
  check('the server recorded the accept (intarsia.accept)', true)

  -- 2. Typing through the suggestion, accept a word, then the line.
  feed('<CR>y = poly')
  wait_for('the ghost text "gon_area(pts)"', suggestion_is('gon_area(pts)'))
  feed('g')
  wait_for('the typed-through suggestion', suggestion_is('on_area(pts)'), 3000)
  check('typing the next character keeps the rest of the suggestion', line(3) == 'y = polyg', line(3))
  feed('<M-Right>')
  wait_for('the word accept', function()
    return line(3) == 'y = polygon_area'
  end, 3000)
  check('<M-Right> accepts the next word and keeps the rest shown', (intarsia.suggestion() or {}).text == '(pts)',
    intarsia.suggestion())
  feed('<M-C-Right>')
  wait_for('the line accept', function()
    return line(3) == 'y = polygon_area(pts)'
  end, 3000)
  check('<M-C-Right> accepts the rest of the line', intarsia.suggestion() == nil, intarsia.suggestion())
  wait_for('the server to record the partial accept', function()
    local acc = status().acceptance
    return acc.partial >= 1 and acc.accepted >= 2
  end, 5000)
  check('the server recorded the partial accept (intarsia.acceptPartial) and the accept', true)

  -- 3. Positions after multi-byte characters (the server negotiated UTF-8).
  feed('<CR>s = "😀漢"; z = ')
  wait_for('the ghost text "len(s)"', suggestion_is('len(s)'))
  m = marks()
  check('the suggestion after multi-byte characters sits at the cursor', #m == 1 and m[1][2] == 3
    and m[1][3] == #'s = "😀漢"; z = ', m)
  feed('<Tab>')
  wait_for('the accept after multi-byte characters', function()
    return line(4) == 's = "😀漢"; z = len(s)'
  end, 3000)

  -- 4. A multi-line suggestion: inline first line, virtual lines below; dismiss, trigger, move, leave.
  feed('<Esc>')
  wait_for('normal mode', function()
    return mode() == 'n'
  end, 3000)
  api.nvim_buf_set_lines(0, -1, -1, false, { '', '', 'def double(x):', '    ' })
  local n = api.nvim_buf_line_count(0)
  api.nvim_win_set_cursor(0, { n, 0 })
  feed('A')
  wait_for('the multi-line ghost text', suggestion_is('y = x * 2\n    return y'))
  m = marks()
  check('the first line is inline, the others are virtual lines', #m == 1 and m[1][4].virt_text[1][1] == 'y = x * 2'
    and #(m[1][4].virt_lines or {}) == 1 and m[1][4].virt_lines[1][1][1] == '    return y', m)
  feed('<C-]>')
  wait_for('the dismissal', function()
    return intarsia.suggestion() == nil and #marks() == 0
  end, 3000)
  check('<C-]> dismisses the suggestion', line(n) == '    ', line(n))
  feed('<M-\\>')
  wait_for('the suggestion asked for with <M-\\>', suggestion_is('y = x * 2\n    return y'))
  feed('<Left>')
  wait_for('the suggestion to clear when the cursor moves', function()
    return intarsia.suggestion() == nil and #marks() == 0
  end, 3000)
  check('moving the cursor clears the suggestion', true)
  feed('<End>')
  wait_for('the suggestion back at the end of the line', suggestion_is('y = x * 2\n    return y'))
  feed('<Esc>')
  wait_for('the suggestion to clear when insert mode ends', function()
    return mode() == 'n' and intarsia.suggestion() == nil and #marks() == 0
  end, 3000)
  check('leaving insert mode clears the suggestion', true)
  feed('A')
  wait_for('the multi-line ghost text again', suggestion_is('y = x * 2\n    return y'))
  feed('<Tab>')
  wait_for('the multi-line accept', function()
    return line(n) == '    y = x * 2' and line(n + 1) == '    return y'
  end, 3000)
  check('<Tab> inserts every line and puts the cursor at the end',
    vim.deep_equal(api.nvim_win_get_cursor(0), { n + 1, #'    return y' }), api.nvim_win_get_cursor(0))

  -- 5. :IntarsiaGenerate fills a function body from its docstring (workspace/applyEdit).
  feed('<Esc>')
  wait_for('normal mode', function()
    return mode() == 'n'
  end, 3000)
  api.nvim_buf_set_lines(0, -1, -1, false, { '', '', 'def area(points):', '    """Area of a polygon."""', '    pass' })
  n = api.nvim_buf_line_count(0)
  api.nvim_win_set_cursor(0, { n - 2, 4 })
  vim.cmd('IntarsiaGenerate')
  wait_for('the generated body', function()
    return line(n) == '    return polygon_area(points)'
  end, 10000)
  check('the body replaces `pass` and the rest of the file is unchanged',
    vim.deep_equal(api.nvim_buf_get_lines(0, n - 3, -1, false),
      { 'def area(points):', '    """Area of a polygon."""', '    return polygon_area(points)' })
      and line(2) == 'total = compute()', api.nvim_buf_get_lines(0, 0, -1, false))
  wait_for('the notification of the generated body', function()
    for _, msg in ipairs(messages) do
      if msg.msg:find('generated the body of area', 1, true) then
        return true
      end
    end
  end, 3000)

  -- 6. New settings reach the server (workspace/didChangeConfiguration) and reload the engine.
  local table2 = vim.deepcopy(cfg.settings.test.table)
  table2['fresh = '] = 'value()'
  intarsia.update_settings({ test = { table = table2 } })
  wait_for('the reloaded engine with the new table', function()
    local s = status()
    return s.state == 'ready' and s.settings.test.table['fresh = '] == 'value()'
  end, 10000)
  api.nvim_buf_set_lines(0, -1, -1, false, { '' })
  api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(0), 0 })
  feed('ifresh = ')
  wait_for('a suggestion from the new table', suggestion_is('value()'))
  feed('<Esc>')

  local warnings = {}
  for _, msg in ipairs(messages) do
    if msg.level and msg.level >= vim.log.levels.WARN then
      warnings[#warnings + 1] = msg.msg
    end
  end
  check('no warnings or errors were shown', #warnings == 0, warnings)
end)

